"""Tests of the exercise-feedback helpers in ``lorakit.check`` (report, is_close, grade_*)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lorakit.check import grade_callable, grade_choice, grade_value, is_close, report


def last_line(capsys) -> str:
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) == 1, f"expected one printed line, got {out!r}"
    return lines[0]


# --------------------------------------------------------------------------- report
def test_report_correct(capsys):
    assert report("01.1", True, "42") is True
    assert last_line(capsys) == "PASS [01.1] correct: 42"


def test_report_correct_without_message(capsys):
    assert report("01.1", True) is True
    assert last_line(capsys) == "PASS [01.1] correct"


def test_report_wrong(capsys):
    assert report("02.3", False, "got 7", hint="think of r") is False
    assert last_line(capsys) == "TRY AGAIN [02.3] not yet: got 7 (hint: think of r)"


def test_report_not_answered(capsys):
    assert report("03.1", None, hint="alpha / r") is False
    assert last_line(capsys) == "TO DO [03.1] not answered yet (hint: alpha / r)"
    report("03.1", None)
    assert last_line(capsys) == "TO DO [03.1] not answered yet"


# --------------------------------------------------------------------------- is_close
@pytest.mark.parametrize(
    "answer, expected, kwargs, ok",
    [
        (1.0, 1.0, {}, True),
        (1.0000001, 1.0, {}, True),
        (1.001, 1.0, {}, False),
        (1.001, 1.0, {"rtol": 1e-2}, True),
        (3, 3.0, {}, True),
        (0.0, 1e-9, {}, False),
        (0.0, 1e-9, {"atol": 1e-8}, True),
        (True, 1, {}, False),
        ("1.0", 1.0, {}, False),
        (None, 1.0, {}, False),
        (np.float64(2.5), 2.5, {}, True),
        (torch.ones(2, 3), torch.ones(2, 3), {}, True),
        (torch.ones(2, 3) + 1e-3, torch.ones(2, 3), {}, False),
        (torch.ones(3, 2), torch.ones(2, 3), {}, False),
        (torch.ones(2, 3, dtype=torch.bfloat16), torch.ones(2, 3), {}, True),
        ([1.0, 1.0], torch.ones(2), {}, False),
    ],
)
def test_is_close(answer, expected, kwargs, ok):
    assert is_close(answer, expected, **kwargs) is ok


def test_is_close_accepts_numpy_numbers():
    assert is_close(np.int64(5), 5)
    assert is_close(np.float32(0.5), 0.5)
    assert not is_close(np.int64(4), 5)


# --------------------------------------------------------------------------- grade_value
def test_grade_value(capsys):
    assert grade_value("05.1", None, 16, hint="bytes per parameter") is False
    assert last_line(capsys).startswith("TO DO ")
    assert grade_value("05.1", 16, 16) is True
    assert last_line(capsys).startswith("PASS ")
    line_ok = grade_value("05.1", 0.1 + 0.2, 0.3)
    assert line_ok is True
    assert last_line(capsys).startswith("PASS ")
    assert grade_value("05.1", 12, 16, hint="count Adam's m and v") is False
    line = last_line(capsys)
    assert line.startswith("TRY AGAIN ") and "got 12" in line and "hint: count Adam's m and v" in line


def test_grade_value_tensor(capsys):
    expected = torch.arange(6.0).reshape(2, 3)
    assert grade_value("01.2", expected.clone(), expected) is True
    assert last_line(capsys).startswith("PASS ")
    assert grade_value("01.2", expected.t(), expected) is False
    line = last_line(capsys)
    assert line.startswith("TRY AGAIN ") and "shape (3, 2), expected (2, 3)" in line
    assert grade_value("01.2", expected + 1, expected) is False
    assert last_line(capsys).startswith("TRY AGAIN ")


# --------------------------------------------------------------------------- grade_choice
OPTIONS = {"a": "no: A is random at init", "b": "yes: B = 0 makes the bypass zero", "c": "no: both are not zero"}


def test_grade_choice(capsys):
    assert grade_choice("02.1", None, "b", OPTIONS) is False
    line = last_line(capsys)
    assert line.startswith("TO DO ") and "['a', 'b', 'c']" in line
    assert grade_choice("02.1", "b", "b", OPTIONS) is True
    assert last_line(capsys) == "PASS [02.1] correct: yes: B = 0 makes the bypass zero"
    assert grade_choice("02.1", " B ", "b", OPTIONS) is True
    assert last_line(capsys).startswith("PASS ")
    assert grade_choice("02.1", "a", "b", OPTIONS) is False
    line = last_line(capsys)
    assert line.startswith("TRY AGAIN ") and "A is random" in line
    assert grade_choice("02.1", "z", "b", OPTIONS) is False
    line = last_line(capsys)
    assert line.startswith("TRY AGAIN ") and "not one of the options" in line


# --------------------------------------------------------------------------- grade_callable
def reference(r: int, d_in: int, d_out: int) -> int:
    return r * (d_in + d_out)


CASES = [(1, 2, 3), (8, 4096, 4096), (4, 10, 20)]


def test_grade_callable_correct(capsys):
    assert grade_callable("01.3", lambda r, i, o: r * i + r * o, reference, CASES) is True
    line = last_line(capsys)
    assert line.startswith("PASS ") and "3 cases" in line


def test_grade_callable_not_answered(capsys):
    assert grade_callable("01.3", None, reference, CASES, hint="r (d_in + d_out)") is False
    assert last_line(capsys).startswith("TO DO ")


def test_grade_callable_wrong(capsys):
    assert grade_callable("01.3", lambda r, i, o: r * i * o, reference, CASES, hint="count A and B") is False
    line = last_line(capsys)
    assert line.startswith("TRY AGAIN ") and "differs" in line and "count A and B" in line


def test_grade_callable_raises(capsys):
    def broken(r, i, o):
        raise KeyError("oops")

    assert grade_callable("01.3", broken, reference, CASES) is False
    line = last_line(capsys)
    assert line.startswith("TRY AGAIN ") and "raised KeyError" in line


def test_grade_callable_tuples_and_tensors(capsys):
    def ref(x):
        return x * 2, x.sum()

    cases = [(torch.ones(3),), (torch.arange(4.0),)]
    assert grade_callable("04.1", lambda x: (x + x, x.sum()), ref, cases) is True
    assert last_line(capsys).startswith("PASS ")
    assert grade_callable("04.1", lambda x: x * 2, ref, cases) is False  # not a tuple
    assert last_line(capsys).startswith("TRY AGAIN ")
    assert grade_callable("04.1", lambda x: (x * 2,), ref, cases) is False  # wrong length
    assert last_line(capsys).startswith("TRY AGAIN ")
    assert grade_callable("04.1", lambda x: (x * 2, x.sum() + 1), ref, cases) is False
    assert last_line(capsys).startswith("TRY AGAIN ")
