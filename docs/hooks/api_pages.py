"""MkDocs hook: an API reference page for every ``api/<module>.md`` in the nav.

A nav entry ``- torchgmm.exceptions: api/torchgmm.exceptions.md`` is all a new public module
needs: when ``docs/api/torchgmm.exceptions.md`` does not exist, this hook adds that page with
a heading-less ``::: torchgmm.exceptions`` directive, which mkdocstrings expands from the
module's docstrings. A page that needs more than the directive (the top-level package's) is
written as a file and left alone.

"""

from __future__ import annotations

import re
from typing import Any

from mkdocs.structure.files import File, Files

_API = re.compile(r"^api/(?P<module>[A-Za-z_][\w.]*)\.md$")


def _nav_paths(nav: Any) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [p for item in nav for p in _nav_paths(item)]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in _nav_paths(value)]
    return []


def on_files(files: Files, config: Any) -> Files:
    for path in _nav_paths(config["nav"] or []):
        match = _API.match(path)
        if match and files.get_file_from_path(path) is None:
            module = match["module"]
            files.append(File.generated(config, path, content=f"::: {module}\n"))
    return files
