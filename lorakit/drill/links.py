"""Links from a question to the notebook section that teaches it (notebook 14, "How the bank is built").

A link is ``"NN_name.ipynb#anchor"``. The anchor is the one JupyterLab and nbconvert (hence the course's site)
give a Markdown heading: its text with every space replaced by ``-`` (JupyterLab's ``createHeaderId``,
nbconvert's ``add_anchor``). Math and punctuation stay as they are, so ``## 3. How many parameters?`` has the
anchor ``3.-How-many-parameters?``. :func:`notebook_anchors` lists the anchors a notebook has, and the tests
check that every link in the question bank points at one of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import quote

__all__ = ["NOTEBOOKS_DIR", "heading_anchor", "link_href", "notebook_anchors", "notebook_headings", "split_link"]

#: The course's notebooks (inside the repository).
NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent.parent / "notebooks"

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def heading_anchor(text: str) -> str:
    """The anchor of a heading whose text is ``text``: Markdown emphasis and code marks dropped, spaces -> ``-``."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty heading text, got {text!r}")
    plain = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text.strip())  # [label](url) -> label
    plain = re.sub(r"(\*\*|__|\*|`)", "", plain)
    return plain.replace(" ", "-")


def notebook_headings(path: str | Path) -> list[tuple[int, str]]:
    """``[(level, text)]`` of the Markdown headings of a notebook, in order (fenced code skipped)."""
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    out: list[tuple[int, str]] = []
    for cell in cells:
        if cell.get("cell_type") != "markdown":
            continue
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        fenced = False
        for line in source.splitlines():
            if _FENCE.match(line):
                fenced = not fenced
                continue
            match = None if fenced else _HEADING.match(line)
            if match:
                out.append((len(match.group(1)), match.group(2)))
    return out


def notebook_anchors(path: str | Path) -> set[str]:
    """Every heading anchor of the notebook at ``path``."""
    return {heading_anchor(text) for _, text in notebook_headings(path)}


def split_link(link: str) -> tuple[str, str]:
    """``"03_x.ipynb#anchor"`` -> ``("03_x.ipynb", "anchor")``; ValueError naming ``link`` otherwise."""
    if not isinstance(link, str) or "#" not in link:
        raise ValueError(f"link must look like 'NN_name.ipynb#anchor', got {link!r}")
    notebook, anchor = link.split("#", 1)
    if not re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", notebook) or not anchor:
        raise ValueError(f"link must look like 'NN_name.ipynb#anchor', got {link!r}")
    return notebook, anchor


def link_href(link: str, prefix: str = "") -> str:
    """An ``href`` for ``link`` (the anchor percent-encoded), relative to ``prefix`` (e.g. ``"../"``)."""
    notebook, anchor = split_link(link)
    return f"{prefix}{notebook}#{quote(anchor, safe='-._~!&()*+,;=:@?/')}"
