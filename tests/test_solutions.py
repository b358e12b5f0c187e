"""Exercises without spoilers: every notebook's solutions live in notebooks/solutions/, generated from the
notebook by scripts/make_solutions.py, in sync, each printing PASS; the learner notebooks show no solution and
their checker cells print one clean line. Also the split itself (round trip, setup closure, widget hygiene)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

from lorakit.check.collect import LINE

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("make_solutions", ROOT / "scripts" / "make_solutions.py")
ms = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(ms)
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_solutions_in_sync(path):
    problems = ms.out_of_sync(path)
    assert not problems, problems[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_learner_notebook_has_stubs_checkers_and_no_solution(path):
    nb = _read(path)
    found = ms.exercises(nb)
    assert len(found) >= 3, f"{path.name}: {len(found)} checked exercises (at least 3 needed)"
    ids = [e for _, e, _ in found]
    for index, exercise, _ in found:
        cell = nb.cells[index]
        assert ms.ends_with_semicolon(cell.source), f"{exercise}: the checker call should end with ';'"
        lines = _text(cell).splitlines()
        assert len(lines) == 1 and LINE.match(lines[0]), f"{exercise}: expected one checker line, got {lines}"
        assert lines[0].startswith("TO DO "), f"{exercise}: the committed learner notebook shows {lines[0]!r}"
        assert not any(o.get("output_type") == "execute_result" for o in cell.outputs), f"{exercise}: echo"
        link = nb.cells[index + 1]
        assert link.cell_type == "markdown" and f"solutions/{path.name}#Exercise-{exercise}" in link.source
    shown = [e for e in ids for c in nb.cells if f"PASS [{e}]" in _text(c)]
    assert not shown, f"{path.name} shows solved exercises {shown}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_solutions_notebook_runs_and_passes(path):
    target = ms.solutions_path(path)
    if not target.is_file():
        pytest.fail(f"{target.name} is missing: run scripts/make_solutions.py notebooks/{path.name}")
    sol = _read(target)
    code = [c for c in sol.cells if c.cell_type == "code" and c.source.strip()]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "not executed in order"
    assert not any(o.output_type == "error" for c in code for o in c.outputs)
    learner = _read(path)
    for index, exercise, _ in ms.exercises(learner):
        cells = [c for c in sol.cells if c.metadata.get("lorakit", {}).get("exercise") == exercise]
        assert cells and f"PASS [{exercise}]" in _text(cells[-1]), f"solution of {exercise} does not pass"
        hint = re.search(r"\(hint: (.*)\)$", _text(learner.cells[index]).strip())
        passed = re.search(r"correct: (-?[\d.]+)$", _text(cells[-1]).strip())
        if hint and passed and len(passed.group(1)) > 1:
            number = rf"(?<![\w.]){re.escape(passed.group(1))}(?!\w|\.\d)"  # "16" itself, not the 16 of "bf16"
            assert not re.search(number, hint.group(1)), f"the hint of {exercise} gives the answer away"


@pytest.mark.parametrize("path", NOTEBOOKS + sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_stale_widget_state(path):
    nb = _read(path)
    assert "widgets" not in nb.metadata, f"{path.name} commits widget state (run scripts/make_solutions.py)"
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            assert ms.WIDGET_VIEW not in data, f"{path.name}: a widget view is committed: {cell.source[:60]!r}"
            plain = data.get("text/plain", "")
            plain = plain if isinstance(plain, str) else "".join(plain)
            assert not plain.startswith(("VBox(", "HBox(", "interactive(")), (
                f"{path.name}: a widget shows its raw repr before it runs: {plain[:60]!r}")


# ----------------------------------------------------------------------------- the split itself
def _toy():
    cells = [
        nbformat.v4.new_markdown_cell("# 99 · Toy"),
        nbformat.v4.new_code_cell("import math\nfrom lorakit.check import nb99"),
        nbformat.v4.new_code_cell("x = 3\nunused = 1"),
        nbformat.v4.new_code_cell("def f(a):\n    return math.sqrt(a) + x"),
        nbformat.v4.new_code_cell("y = train_for_an_hour()"),
        nbformat.v4.new_code_cell("seed_everything(0)", metadata={"tags": ["solutions-setup"]}),
        nbformat.v4.new_markdown_cell("## Check yourself\n\n**1.** What is f(4)?"),
        nbformat.v4.new_code_cell("answer = None  # your answer here\nnb99.q1(answer)"),
        nbformat.v4.new_code_cell("# Solution (expand to see)\nnb99.q1(f(4))", metadata={"tags": ["solution"]}),
        nbformat.v4.new_markdown_cell("**2.** And x?"),
        nbformat.v4.new_code_cell("answer = None\nnb99.q2(answer)"),
        nbformat.v4.new_code_cell("# Solution\nr = [i for i in range(x)]\nnb99.q2(len(r))",
                                  metadata={"tags": ["solution"]}),
    ]
    return nbformat.v4.new_notebook(cells=cells)


def test_split_moves_solutions_into_metadata_and_links():
    nb = ms.split(_toy(), "99_toy.ipynb")
    assert not any(ms.is_solution(c) for c in nb.cells)
    found = ms.exercises(nb)
    assert [(e, s) for _, e, s in found] == [("99.1", ["nb99.q1(f(4));"]), ("99.2", ["r = [i for i in range(x)]\n"
                                                                                     "nb99.q2(len(r));"])]
    assert nb.cells[found[0][0]].source.endswith("nb99.q1(answer);")
    assert "solutions/99_toy.ipynb#Exercise-99.1" in nb.cells[found[0][0] + 1].source
    assert ms.split(nb, "99_toy.ipynb").cells == nb.cells  # idempotent


def test_inline_round_trip():
    nb = ms.split(_toy(), "99_toy.ipynb")
    back = ms.inline(nb)
    assert sum(ms.is_solution(c) for c in back.cells) == 2 and not ms.exercises(back)
    assert [c.source for c in ms.split(back, "99_toy.ipynb").cells] == [c.source for c in nb.cells]


def test_solutions_notebook_copies_only_the_needed_setup():
    nb = ms.split(_toy(), "99_toy.ipynb")
    sol = ms.solutions_notebook(nb, "99_toy.ipynb")
    copied = [c.source for c in sol.cells if c.metadata.get("lorakit", {}).get("copied_from") is not None]
    assert copied == [nb.cells[1].source, nb.cells[2].source, nb.cells[3].source, nb.cells[5].source]
    headings = [c.source.splitlines()[0] for c in sol.cells if c.cell_type == "markdown"]
    assert headings[1:] == ["### Exercise 99.1", "### Exercise 99.2"] and "(../99_toy.ipynb)" in sol.cells[0].source


def test_names_are_scope_aware():
    defined, used = ms.names("import numpy as np\nfor i in range(3):\n    z = i\n"
                             "def g(a):\n    return a + w\n%time q = 1\nk = [j for j in v]")
    assert defined >= {"np", "i", "z", "g", "k"} and "q" not in defined
    assert {"w", "v"} <= used and not {"a", "j", "range"} & used


def test_quiet_checker_calls_and_widget_strip():
    assert ms.quiet_checker_calls("answer = 1\nnb03.q1(answer)") == "answer = 1\nnb03.q1(answer);"
    assert ms.quiet_checker_calls("print(nb03.q1(1))") == "print(nb03.q1(1))"
    assert ms.ends_with_semicolon("nb03.q1(x);  # note") and not ms.ends_with_semicolon("nb03.q1(x)  # a; b")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("w()")], metadata={"widgets": {"x": 1}})
    nb.cells[0].outputs = [nbformat.v4.new_output("display_data", data={ms.WIDGET_VIEW: {"model_id": "m"},
                                                                        "text/plain": "[interactive] w"})]
    ms.strip_widgets(nb)
    assert "widgets" not in nb.metadata and list(nb.cells[0].outputs[0].data) == ["text/plain"]


def test_split_errors():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("# Solution\n1", metadata={"tags": ["solution"]})])
    with pytest.raises(ValueError, match="before any code cell"):
        ms.split(nb, "x.ipynb")
    solution = nbformat.v4.new_code_cell("# Solution\nb = 2", metadata={"tags": ["solution"]})
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("a = 1"), solution])
    with pytest.raises(ValueError, match="which exercise"):
        ms.split(nb, "x.ipynb")
