"""lorakit.check's one-line format: plain markers, one line, results(), the teacher's collector, and the ';'
that silences the True/False echo even when a cell runs without history (as under nbval)."""

from __future__ import annotations

import json

import pytest

from lorakit import check
from lorakit.check import MARKERS, report, results
from lorakit.check.collect import LINE, format_table, main, verdicts, verdicts_from_text


def test_markers_are_plain_text():
    assert all(m.isascii() and m.replace(" ", "").isalpha() for m in MARKERS.values())


def test_report_one_line_even_with_newlines(capsys):
    report("99.1", False, "got\n7", hint="a\nb")
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("TRY AGAIN [99.1] not yet: got 7 (hint: a b)")


def test_results_keep_the_latest_verdict():
    report("98.1", None)
    report("98.2", False, "x")
    report("98.2", True)
    assert results()["98.1"] is None and results()["98.2"] is True


def test_collector_reads_lines_back(tmp_path, capsys):
    text = "\n".join(["TO DO [03.1] not answered yet", "PASS [03.1] correct: 2", "TRY AGAIN [03.2] not yet: x",
                      "noise PASS [03.3]", "TO DO [03.4] not answered yet (hint: y)"])
    assert verdicts_from_text(text) == {"03.1": "pass", "03.2": "try again", "03.4": "to do"}
    nb = {"cells": [{"cell_type": "code", "outputs": [{"output_type": "stream", "name": "stdout",
                                                        "text": [line + "\n" for line in text.splitlines()]}]}]}
    for name in ("alice.ipynb", "bob.ipynb"):
        (tmp_path / name).write_text(json.dumps(nb))
    (tmp_path / "carol.ipynb").write_text(json.dumps({"cells": []}))
    assert verdicts(tmp_path / "alice.ipynb")["03.1"] == "pass"
    paths = [str(tmp_path / n) for n in ("alice.ipynb", "bob.ipynb", "carol.ipynb")]
    assert main([*paths, "--csv", str(tmp_path / "marks.csv")]) == 0
    table = capsys.readouterr().out
    assert "alice.ipynb" in table and "1/3" in table and "0/3" in table and "+ pass" in table
    rows = (tmp_path / "marks.csv").read_text().splitlines()
    assert rows[0] == "notebook,exercise,verdict" and "alice.ipynb,03.2,try again" in rows
    assert format_table({}) == "no checker lines found"


def test_every_checker_line_matches_the_collector(capsys):
    report("07.3", True, "fine")
    report("07.3", False, "off", "h")
    report("07.3", None, hint="h")
    lines = capsys.readouterr().out.splitlines()
    assert [bool(LINE.match(line)) for line in lines] == [True, True, True]


@pytest.fixture
def shell():
    pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell

    sh = InteractiveShell.instance()
    check._semicolon_silences_without_history()
    yield sh
    InteractiveShell.clear_instance()


def test_semicolon_silences_without_history(shell):
    assert shell.run_cell("1 + 1", store_history=False).result == 2
    assert shell.run_cell("1 + 1;", store_history=False).result is None
    assert shell.run_cell("1 + 1;", store_history=True).result is None
    assert shell.run_cell("x = 3\nx", store_history=False).result == 3
    check._semicolon_silences_without_history()  # idempotent
    assert shell.displayhook._lorakit_quiet is True
