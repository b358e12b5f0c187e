"""A teacher's report: every exercise's verdict, read out of students' saved notebooks.

    python -m lorakit.check.collect submissions/*.ipynb              # a table on the terminal
    python -m lorakit.check.collect submissions/*.ipynb --csv marks.csv
    python -m lorakit.check.collect submissions/*.ipynb --execute    # re-run each notebook first

Each checker prints one line that starts with a plain marker, ``PASS [03.1] ...``, ``TRY AGAIN [03.1] ...`` or
``TO DO [03.1] ...`` (:func:`lorakit.check.report`). This module finds those lines in the saved outputs; the last
verdict of an exercise in a notebook wins. With ``--execute`` each notebook is run again first (in its own folder,
with the course's kernel), so the table reflects the code the student wrote and not outputs edited by hand.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from lorakit.check import MARKERS

__all__ = ["LINE", "collect", "format_table", "verdicts", "verdicts_from_text"]

_STATUS = {MARKERS["pass"]: "pass", MARKERS["fail"]: "try again", MARKERS["todo"]: "to do"}
#: A checker line: marker, then the exercise id in brackets.
LINE = re.compile(r"^(" + "|".join(re.escape(m) for m in _STATUS) + r") \[(\d\d\.\d+)\]", re.M)


def verdicts_from_text(text: str) -> dict[str, str]:
    """``{exercise: "pass" | "try again" | "to do"}`` from checker lines in ``text`` (the last line wins)."""
    return {exercise: _STATUS[marker] for marker, exercise in LINE.findall(text)}


def _outputs_text(nb: dict) -> str:
    parts = []
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            text = out.get("text", "")
            parts.append("".join(text) if isinstance(text, list) else text)
    return "\n".join(parts)


def _execute(path: Path, timeout: int) -> dict:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return json.loads(nbformat.writes(nb))


def verdicts(path: str | Path, execute: bool = False, timeout: int = 600) -> dict[str, str]:
    """The verdicts in one notebook file (run again first when ``execute``)."""
    path = Path(path)
    nb = _execute(path, timeout) if execute else json.loads(path.read_text(encoding="utf-8"))
    return verdicts_from_text(_outputs_text(nb))


def collect(paths: Iterable[str | Path], execute: bool = False) -> dict[str, dict[str, str]]:
    """``{notebook file: {exercise: verdict}}`` for every path."""
    return {str(p): verdicts(p, execute) for p in paths}


def format_table(table: dict[str, dict[str, str]]) -> str:
    """Students down, exercises across, ``+`` pass, ``x`` try again, ``.`` to do, ``-`` not run; and a total."""
    exercises = sorted({e for row in table.values() for e in row})
    if not exercises:
        return "no checker lines found"
    mark = {"pass": "+", "try again": "x", "to do": "."}
    width = max(len(Path(p).name) for p in table)
    lines = [f"{'notebook':<{width}}  " + " ".join(f"{e:>5}" for e in exercises) + "  passed"]
    for path, row in table.items():
        cells = " ".join(f"{mark.get(row.get(e, ''), '-'):>5}" for e in exercises)
        passed = sum(v == "pass" for v in row.values())
        lines.append(f"{Path(path).name:<{width}}  {cells}  {passed}/{len(exercises)}")
    lines.append("+ pass   x try again   . not answered   - not run")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Collect exercise verdicts from students' notebooks.")
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--csv", type=Path, help="also write notebook,exercise,verdict rows to this file")
    parser.add_argument("--execute", action="store_true", help="re-run each notebook before reading it")
    args = parser.parse_args(argv)
    table = collect(args.notebooks, args.execute)
    print(format_table(table))
    if args.csv:
        with args.csv.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["notebook", "exercise", "verdict"])
            for path, row in table.items():
                writer.writerows([Path(path).name, e, v] for e, v in sorted(row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
