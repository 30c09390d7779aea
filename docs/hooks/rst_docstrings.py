"""Griffe extension: the reStructuredText bits of the docstrings, as Markdown.

The docstrings are Google style (Args / Returns / Raises / Shape / Example), which
mkdocstrings reads, but a few reStructuredText constructs remain that Markdown would show
as they are written. Before mkdocstrings parses a docstring this extension rewrites:

- Sphinx roles (``:class:`X```, ``:func:`~a.b.f```) as code (``X``, ``f``);
- simple tables (columns framed by lines of ``=``) as Markdown tables;
- a paragraph's closing ``::`` before an indented literal block as ``:``.

The source files are not changed. Loaded by ``mkdocs.yml`` (mkdocstrings ``extensions``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj|const):`~?([^`]+)`")
_BORDER = re.compile(r"^(\s*)(=+)( +=+)+\s*$")


def _role(match: re.Match) -> str:
    target = match[1]
    return f"`{target.rsplit('.', 1)[-1]}`" if match[0].split("`")[1].startswith("~") else f"`{target}`"


def _cells(line: str, spans: list[tuple[int, int]]) -> list[str]:
    cells = []
    for j, (a, _) in enumerate(spans):
        end = spans[j + 1][0] if j + 1 < len(spans) else len(line)
        cells.append(line[a:end].strip().replace("|", "\\|"))
    return cells


def _tables(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _BORDER.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        border = lines[i]
        spans = [(s.start(), s.end()) for s in re.finditer(r"=+", border)]
        borders = [i]
        j = i + 1
        while j < len(lines) and lines[j].strip() and len(borders) < 3:
            if lines[j].rstrip() == border.rstrip():
                borders.append(j)
            j += 1
        if len(borders) == 2:  # a table without a header row
            borders.insert(0, borders[0])
        if len(borders) != 3:  # not a simple table: leave it
            out.append(lines[i])
            i += 1
            continue
        header = [_cells(x, spans) for x in lines[borders[0] + 1 : borders[1]]]
        body = [_cells(x, spans) for x in lines[borders[1] + 1 : borders[2]]]
        indent = m[1]
        head = [" ".join(c).strip() for c in zip(*header)] if header else [""] * len(spans)
        out.append(indent + "| " + " | ".join(head) + " |")
        out.append(indent + "|" + "---|" * len(spans))
        out.extend(indent + "| " + " | ".join(row) + " |" for row in body)
        i = borders[2] + 1
    return out


def rst_to_markdown(text: str) -> str:
    """The docstring ``text`` with roles, simple tables and ``::`` blocks in Markdown."""
    text = _ROLE.sub(_role, text)
    lines = _tables(text.split("\n"))
    out: list[str] = []
    for k, line in enumerate(lines):
        if line.rstrip().endswith("::") and line.strip() != "::":
            out.append(line.rstrip()[:-1])  # "as follows::" -> "as follows:"
            if k + 1 < len(lines) and lines[k + 1].strip():
                out.append("")  # the literal block starts a block of its own
        else:
            out.append(line)
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Rewrites each object's docstring with :func:`rst_to_markdown` as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
