"""The README and the documentation pages say what the code does: their Python blocks run.

Every ```` ```python ```` block of README.md, and of each page under docs/, is executed, in
the order of its file and in one namespace per file (as a reader would paste them into one
session), in a temporary working folder that holds what the examples read: the bundled
cameraman image at ``torchgmm/data/cameraman.png`` and the demo's clip at
``torchgmm-demo/clip.mkv``. Shell blocks are not run. A block that needs data outside the
repository is marked by the line before its fence,

    <!-- test: skip (what it needs) -->

and is then reported as skipped, never silently left out.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

_BLOCK = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>[^\n`]*)\n(?P<code>.*?)\n```[ \t]*(?:\n|$)", re.S)
_SKIP = re.compile(r"<!--\s*test:\s*skip\s*\((?P<why>[^)]+)\)\s*-->")


def python_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line, code, skip reason or None)`` of each Python block of ``path``."""
    text = "\n" + path.read_text(encoding="utf-8")
    blocks = []
    for m in _BLOCK.finditer(text):
        if m["lang"].strip().split(" ")[0] not in ("python", "py"):
            continue
        skip = _SKIP.search(m["before"])
        line = text.count("\n", 0, m.start("code"))
        blocks.append((line, m["code"], skip["why"] if skip else None))
    return blocks


#: the documentation pages that hold Python blocks
PAGES = [page for page in sorted((ROOT / "docs").rglob("*.md")) if python_blocks(page)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working folder with the files the examples read (bundled image, demo clip)."""
    from torchgmm.demo import synthetic_clip
    from torchgmm.io.video import VideoWriter

    work = tmp_path_factory.mktemp("readme")
    (work / "torchgmm").mkdir()
    (work / "torchgmm" / "data").symlink_to(ROOT / "torchgmm" / "data", target_is_directory=True)
    (work / "torchgmm-demo").mkdir()
    frames, _, _ = synthetic_clip(40, 48, 64)  # the demo's clip, shorter and smaller
    with VideoWriter(work / "torchgmm-demo" / "clip.mkv", fps=25) as writer:
        writer.write(frames)
    return work


def run_blocks(path: Path, workdir: Path) -> list[str]:
    skipped = []
    namespace: dict = {"__name__": f"{path.name}_examples"}
    old = os.getcwd()
    os.chdir(workdir)
    try:
        for line, code, skip in python_blocks(path):
            if skip:
                skipped.append(f"{path.name}:{line}: {skip}")
                continue
            try:
                exec(compile(code, f"{path.relative_to(ROOT)}:{line}", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"the Python block at {path.relative_to(ROOT)}:{line} failed: {exc!r}") from exc
    finally:
        os.chdir(old)
    return skipped


def test_readme_examples_run(workdir):
    skipped = run_blocks(README, workdir)
    assert len(python_blocks(README)) >= 5
    assert len(skipped) <= 2, f"keep the README's examples runnable; skipped: {skipped}"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT / "docs")) for p in PAGES])
def test_doc_page_examples_run(page, workdir):
    run_blocks(page, workdir)


#: the blocks marked as needing data outside the repository, each reported as a skip
MARKED = [(path, line, why) for path in [README, *PAGES] for line, _, why in python_blocks(path) if why is not None]


@pytest.mark.parametrize(
    ("path", "line", "why"), MARKED, ids=[f"{p.relative_to(ROOT)}:{line}" for p, line, _ in MARKED]
)
def test_marked_block_is_not_run(path, line, why):
    pytest.skip(f"{path.relative_to(ROOT)}:{line} not run: {why}")


def test_readme_keeps_the_setup_commands_and_links():
    text = README.read_text(encoding="utf-8")
    # the project's two set-up commands, exactly
    assert 'pip install -e ".[test]" && torchgmm demo' in text
    assert re.search(r"^pytest\s", text, re.M)
    assert 150 <= len(text.splitlines()) <= 200, "the README is a doorway: about 150-200 lines"
    for target in re.findall(r"\]\(([^)#]+?)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_blocks_are_found_and_skips_need_a_reason(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n```python\nx = 1\n```\n<!-- test: skip (a CDnet folder) -->\n```python\nboom\n```\n"
        "```bash\nnot python\n```\n",
        encoding="utf-8",
    )
    blocks = python_blocks(page)
    assert [(code, why) for _, code, why in blocks] == [("x = 1", None), ("boom", "a CDnet folder")]
