"""Exercises without spoilers: learner notebooks keep the stubs and checkers, worked solutions live apart.

    python scripts/make_solutions.py                       # every notebooks/NN_*.ipynb (what `make solutions` runs)
    python scripts/make_solutions.py notebooks/14_interview_drill.ipynb
    python scripts/make_solutions.py --check               # exit 1 if a solutions notebook is out of sync
    python scripts/make_solutions.py --plan                # which cells each solutions notebook would hold
    python scripts/make_solutions.py --inline NB           # put the solutions back inline, to edit them
    python scripts/make_solutions.py --force NB            # also re-execute the learner notebook (code edited)

**One source.** A notebook's exercises are written inline, as the course always has: a markdown prompt, a checker
cell (``answer = None`` + ``nbNN.qK(answer);``) and a code cell tagged ``solution`` after it. This script moves each
solution cell's source into the metadata of its checker cell (``metadata.lorakit.solution``), replaces the cell by
a one-line link to the worked solution, and writes ``notebooks/solutions/NN_name.ipynb`` from that metadata. The
learner notebook is then the only source: the solutions notebook is regenerated from it every time (``--check``
and ``tests/test_solutions.py`` fail when the committed one differs), so stubs and solutions cannot drift. To
change a solution, ``--inline`` it, edit the tagged cell, and run the script again.

**What a solutions notebook contains, and why.** nbval runs the solutions notebooks too, and ``make test`` must run
the whole course in under 15 minutes. So a solutions notebook holds only the "Check yourself" exercises and the
setup their solutions need: the code cells before the exercises that define a name a solution uses, found by
reading the code (the names each cell assigns, defines or imports, and those it uses, followed back until
closed), plus any cell tagged ``solutions-setup`` (for setup that works by side effect). A cell tagged
``solutions-skip`` is never copied. Training loops that no solution needs are left out, which keeps most solutions
notebooks to a few seconds.

**Also, for every notebook it touches:** the checker calls end with ``;`` (so a cell prints its one verdict line and
no ``True``/``False`` echo), widget state is not committed (``metadata.widgets`` and widget-view outputs are dropped,
so a fresh clone shows each widget's plain-text line instead of "Error displaying widget: model not found"), and
both notebooks are executed (``--no-execute`` skips that).
"""

from __future__ import annotations

import argparse
import builtins
import copy
import re
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SOLUTIONS = NOTEBOOKS / "solutions"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
CHECK_CALL = re.compile(r"\bnb(\d\d)\.q(\d+)\(")
CHECK_HEADING = re.compile(r"^#+\s*Check yourself", re.M | re.I)
KEY = "lorakit"
SOLUTION_COMMENT = re.compile(r"^# Solution\b[^\n]*\n")


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def is_solution(cell) -> bool:
    """A code cell tagged ``solution`` (or, in older notebooks, starting with ``# Solution``)."""
    return cell.cell_type == "code" and ("solution" in _tags(cell) or cell.source.lstrip().startswith("# Solution"))


def exercise_id(*sources: str) -> str | None:
    """``"03.4"`` from the first ``nb03.q4(`` call in the sources."""
    for source in sources:
        match = CHECK_CALL.search(source)
        if match:
            return f"{match.group(1)}.{match.group(2)}"
    return None


def quiet_checker_calls(source: str) -> str:
    """End a final ``nbNN.qK(...)`` line with ``;`` so the cell shows one verdict line and no True/False echo."""
    lines = source.rstrip().splitlines()
    if lines and CHECK_CALL.match(lines[-1].strip()) and lines[-1].rstrip().endswith(")"):
        lines[-1] = lines[-1].rstrip() + ";"
    return "\n".join(lines)


def check_section_start(nb) -> int:
    """Index of the markdown cell with the "Check yourself" heading (ValueError if there is none)."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and CHECK_HEADING.search(cell.source):
            return i
    raise ValueError("the notebook has no 'Check yourself' heading")


def solutions_path(learner: Path) -> Path:
    return learner.parent / "solutions" / learner.name


def _id(*parts: object) -> str:
    """A stable cell id (so regenerating a notebook does not change its ids)."""
    return "-".join(re.sub(r"[^A-Za-z0-9]+", "-", str(p)) for p in parts)[:64]


def ends_with_semicolon(source: str) -> bool:
    """Whether the cell's last token (comments aside) is ``;``: then IPython shows no result for it."""
    import io
    import tokenize

    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return False
    skip = (tokenize.ENDMARKER, tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.DEDENT, tokenize.INDENT)
    last = next((t for t in reversed(tokens) if t.type not in skip), None)
    return last is not None and last.type == tokenize.OP and last.string == ";"


def link_cell(learner_name: str, exercise: str):
    cell = nbformat.v4.new_markdown_cell(
        f"*Stuck? A worked solution is in [solutions/{learner_name}, exercise {exercise}]"
        f"(solutions/{learner_name}#Exercise-{exercise}). Try it yourself first.*")
    cell.metadata[KEY] = {"solution_link": exercise}
    cell.id = _id("solution-link", exercise)
    return cell


# ---------------------------------------------------------------------------------------------- splitting
def split(nb, learner_name: str):
    """Move inline solution cells into their checker cell's metadata; return the learner notebook (a copy)."""
    nb = copy.deepcopy(nb)
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.metadata.get(KEY, {}).get("solution_link"):
            continue  # re-created below
        if is_solution(cell):
            checker = next((c for c in reversed(cells) if c.cell_type == "code"), None)
            if checker is None:
                raise ValueError("a solution cell comes before any code cell")
            meta = checker.metadata.setdefault(KEY, {})
            meta.setdefault("solution", []).append(quiet_checker_calls(SOLUTION_COMMENT.sub("", cell.source, 1)))
            meta["exercise"] = exercise_id(cell.source, checker.source) or meta.get("exercise")
            continue
        if cell.cell_type == "code":
            cell.source = quiet_checker_calls(cell.source)
        cells.append(cell)
    out = []
    for cell in cells:
        out.append(cell)
        meta = cell.metadata.get(KEY, {}) if cell.cell_type == "code" else {}
        if meta.get("solution"):
            if not meta.get("exercise"):
                raise ValueError(f"cannot tell which exercise this solution belongs to: {cell.source[:80]!r}")
            meta["solution"] = [quiet_checker_calls(s) for s in meta["solution"]]
            out.append(link_cell(learner_name, meta["exercise"]))
    nb.cells = out
    return nb


def inline(nb):
    """The inverse of :func:`split`: solution cells back after their checkers (tagged ``solution``), links removed."""
    nb = copy.deepcopy(nb)
    out = []
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.metadata.get(KEY, {}).get("solution_link"):
            continue
        out.append(cell)
        meta = cell.metadata.get(KEY, {}) if cell.cell_type == "code" else {}
        for source in meta.pop("solution", []):
            out.append(nbformat.v4.new_code_cell(source, metadata={"tags": ["solution"],
                                                                  "jupyter": {"source_hidden": True}}))
        if cell.cell_type == "code" and KEY in cell.metadata and not cell.metadata[KEY].get("solution"):
            cell.metadata[KEY].pop("exercise", None)
            if not cell.metadata[KEY]:
                del cell.metadata[KEY]
    nb.cells = out
    return nb


def exercises(nb) -> list[tuple[int, str, list[str]]]:
    """``[(checker cell index, exercise id, solution sources)]`` of a split notebook."""
    return [(i, c.metadata[KEY]["exercise"], list(c.metadata[KEY]["solution"])) for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and c.metadata.get(KEY, {}).get("solution")]


# ---------------------------------------------------------------------------------------------- dependencies
def names(source: str) -> tuple[set[str], set[str]]:
    """``(defined, used)``: the module-level names a cell binds (assignments, defs, imports, loop targets) and the
    module-level names it reads, including those read inside its functions and comprehensions (Python's
    ``symtable``, so a function's parameters and locals do not count)."""
    import symtable

    code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    try:
        table = symtable.symtable(code, "<cell>", "exec")
    except SyntaxError:
        return set(), set()
    defined = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}
    used = {s.get_name() for s in table.get_symbols() if s.is_referenced()}

    def walk(t: symtable.SymbolTable) -> None:
        for child in t.get_children():
            used.update(s.get_name() for s in child.get_symbols()
                        if s.is_referenced() and (s.is_global() or s.is_free()) and not s.is_local())
            walk(child)

    walk(table)
    return defined, used - set(dir(builtins))


def setup_cells(nb, sources: list[str], before: int) -> list[int]:
    """Indices (< ``before``) of the code cells the ``sources`` need: name closure plus ``solutions-setup`` tags."""
    code = [(i, c) for i, c in enumerate(nb.cells[:before]) if c.cell_type == "code"
            and not c.metadata.get(KEY, {}).get("solution") and "solutions-skip" not in _tags(c)]
    info = {i: names(c.source) for i, c in code}
    chosen = {i for i, c in code if "solutions-setup" in _tags(c)}
    todo: list[tuple[str, int]] = []  # (name, the cell index it must be defined before)
    for source in sources:
        defined, used = names(source)
        todo += [(n, before) for n in used - defined]
    for i in chosen:
        todo += [(n, i) for n in info[i][1] - info[i][0]]
    seen: set[tuple[str, int]] = set()
    while todo:
        name, limit = todo.pop()
        if (name, limit) in seen:
            continue
        seen.add((name, limit))
        definers = [i for i, _ in code if i < limit and name in info[i][0]]
        if definers and definers[-1] not in chosen:
            i = definers[-1]
            chosen.add(i)
            todo += [(n, i) for n in info[i][1] - info[i][0]]
    return sorted(chosen)


# ---------------------------------------------------------------------------------------------- solutions notebook
_ANSWER_STUB = re.compile(r"^answer\s*=\s*None\b")


def checker_setup(source: str) -> str:
    """What a checker cell sets up before its ``answer = None`` stub and checker call (e.g. the layer an exercise
    asks about): the solution needs it too, so the solutions notebook runs it first ("" when there is none)."""
    kept = []
    for line in source.splitlines():
        if CHECK_CALL.search(line) and not line[:1].isspace():
            break  # the checker call ends the setup
        if not _ANSWER_STUB.match(line):
            kept.append(line)
    return "\n".join(kept).strip()


def solutions_notebook(nb, learner_name: str):
    """The worked-solutions notebook generated from a split learner notebook."""
    start = check_section_start(nb)
    found = exercises(nb)
    if not found:
        raise ValueError("no exercise with a stored solution (run the split first)")
    title = next((c.source.splitlines()[0].lstrip("# ").strip() for c in nb.cells if c.cell_type == "markdown"),
                 learner_name)
    cells = [nbformat.v4.new_markdown_cell(
        id="title", source=f"# Solutions · {title}\n\nWorked solutions to the \"Check yourself\" exercises of "
        f"[{learner_name}](../{learner_name}). This notebook is generated by `scripts/make_solutions.py` from that "
        "notebook (`make solutions`): edit the exercises there, not here.\n\nIt runs only the setup the solutions "
        "need (the cells below, copied from the notebook), so it stays fast.")]
    setups = {index: checker_setup(nb.cells[index].source) for index, _, _ in found}
    for index, _, sources in found:  # a stub the learner fills in (``def f(...): ...``) is the solution's to write
        if setups[index] and names(setups[index])[0] & set().union(*(names(s)[0] for s in sources)):
            setups[index] = ""
    every = [s for _, _, sources in found for s in sources] + [s for s in setups.values() if s]
    for i in setup_cells(nb, every, found[-1][0]):
        cells.append(nbformat.v4.new_code_cell(nb.cells[i].source, id=_id("setup", i),
                                               metadata={KEY: {"copied_from": i}}))
    for index, exercise, sources in found:
        prompt = nb.cells[index - 1] if index > 0 and nb.cells[index - 1].cell_type == "markdown" else None
        text = f"### Exercise {exercise}"
        if prompt is not None and index - 1 >= start:
            text += "\n\n" + CHECK_HEADING.sub("", prompt.source).strip()
        cells.append(nbformat.v4.new_markdown_cell(text, id=_id("exercise", exercise)))
        if setups[index]:
            cells.append(nbformat.v4.new_code_cell(setups[index], id=_id("exercise-setup", exercise),
                                                   metadata={KEY: {"copied_from": index}}))
        cells += [nbformat.v4.new_code_cell(s, id=_id("solution", exercise, k), metadata={KEY: {"exercise": exercise}})
                  for k, s in enumerate(sources)]
    return nbformat.v4.new_notebook(cells=cells, metadata=copy.deepcopy(dict(nb.metadata)))


# ---------------------------------------------------------------------------------------------- hygiene + execution
def strip_widgets(nb):
    """Drop committed widget state and widget-view outputs (each widget keeps its plain-text line)."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if WIDGET_VIEW in out.get("data", {}):
                del out["data"][WIDGET_VIEW]
        cell.metadata.pop("execution", None)
    return nb


TIMEOUT = 600  # seconds per cell (--timeout)


def execute(nb, directory: Path):
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=TIMEOUT, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(directory)}}).execute()
    return strip_widgets(nb)  # widget state is recorded while running (an Output widget needs it), then dropped


def verify(solutions, learner) -> list[str]:
    """Problems: a solution that does not print PASS for its exercise, or a learner notebook showing a PASS."""
    problems = []
    for cell in solutions.cells:
        exercise = cell.metadata.get(KEY, {}).get("exercise")
        if exercise and not any(f"PASS [{exercise}]" in o.get("text", "") for o in cell.get("outputs", [])):
            problems.append(f"solution of {exercise} does not print 'PASS [{exercise}]'")
    ids = {exercise for _, exercise, _ in exercises(learner)}
    for cell in learner.cells:
        shown = {e for e in ids for o in cell.get("outputs", []) if f"PASS [{e}]" in o.get("text", "")}
        if shown:
            problems.append(f"the learner notebook shows solved exercises {sorted(shown)}")
    return problems


def _same_sources(a, b) -> bool:
    return [(c.cell_type, c.source) for c in a.cells] == [(c.cell_type, c.source) for c in b.cells]


def process(path: Path, run: bool = True, force: bool = False) -> dict:
    """Split ``path`` in place, write its solutions notebook, execute both; return timings and problems."""
    original = nbformat.read(path, as_version=4)
    learner = split(original, path.name)
    changed = not _same_sources(learner, original)
    solutions = solutions_notebook(learner, path.name)
    report = {"notebook": path.name, "exercises": len(exercises(learner)), "changed": changed}
    if run:
        start = time.time()
        stale = any(c.cell_type == "code" and c.source.strip() and c.execution_count is None for c in learner.cells)
        rerun = changed or force or stale or "widgets" in original.metadata
        learner = execute(learner, path.parent) if rerun else strip_widgets(learner)
        report["learner_seconds"] = round(time.time() - start, 1) if rerun else None
        start = time.time()
        SOLUTIONS.mkdir(exist_ok=True)
        solutions = execute(solutions, path.parent)
        report["solutions_seconds"] = round(time.time() - start, 1)
        report["problems"] = verify(solutions, learner)
    else:
        strip_widgets(learner)
    nbformat.write(learner, path)
    target = solutions_path(path)
    target.parent.mkdir(exist_ok=True)
    nbformat.write(solutions, target)
    return report


def out_of_sync(path: Path) -> list[str]:
    """Why ``path``'s committed solutions notebook differs from the one it generates (empty: in sync)."""
    nb = nbformat.read(path, as_version=4)
    if any(is_solution(c) for c in nb.cells):
        return [f"{path.name} still has inline solution cells: run scripts/make_solutions.py {path.name}"]
    if not exercises(nb):
        return [f"{path.name} has no stored solutions: run scripts/make_solutions.py {path.name}"]
    target = solutions_path(path)
    if not target.is_file():
        return [f"{target.relative_to(path.parent.parent)} is missing"]
    if not _same_sources(solutions_notebook(nb, path.name), nbformat.read(target, as_version=4)):
        return [f"{target.name} is out of sync with {path.name}: run scripts/make_solutions.py {path.name}"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--check", action="store_true", help="only check that solutions are in sync")
    parser.add_argument("--plan", action="store_true", help="print the cells each solutions notebook would copy")
    parser.add_argument("--inline", action="store_true", help="put the solutions back inline (to edit them)")
    parser.add_argument("--no-execute", action="store_true", help="do not execute the notebooks")
    parser.add_argument("--force", action="store_true",
                        help="re-execute the learner notebooks too (after editing a code cell outside the exercises)")
    parser.add_argument("--timeout", type=int, default=TIMEOUT, help="seconds a cell may run (default 600)")
    args = parser.parse_args(argv)
    globals()["TIMEOUT"] = args.timeout
    paths = args.notebooks or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    status = 0
    for path in paths:
        if args.check:
            for problem in out_of_sync(path):
                print(problem)
                status = 1
        elif args.inline:
            nbformat.write(inline(nbformat.read(path, as_version=4)), path)
            print(f"{path.name}: solutions inline again; edit them, then run scripts/make_solutions.py {path.name}")
        elif args.plan:
            learner = split(nbformat.read(path, as_version=4), path.name)
            found = exercises(learner)
            setup = setup_cells(learner, [s for _, _, ss in found for s in ss], found[-1][0]) if found else []
            print(f"{path.name}: {len(found)} exercises; setup cells copied: {setup}")
        else:
            report = process(path, run=not args.no_execute, force=args.force)
            print(report, flush=True)
            status |= bool(report.get("problems"))
    return status


if __name__ == "__main__":
    sys.exit(main())
