"""Immediate feedback for the "check yourself" exercises at the end of every notebook.

Each notebook has a module ``lorakit.check.nbNN`` whose functions take the learner's answer, compute
the expected one with lorakit (never a hard-coded number), and print one line::

    PASS [01.2] correct: ...        TRY AGAIN [01.2] not yet: <what is off> (hint: ...)
    TO DO [01.2] not answered yet (hint: ...)

The markers are plain words (:data:`MARKERS`), so they read the same without an emoji font, in a terminal
and in a saved notebook; :mod:`lorakit.check.collect` reads them back out of students' notebooks for a
teacher. Each checker returns True/False, so a teacher can also assert on them; end the checker call with
``;`` in a notebook cell so the True/False is not echoed under the line.
"""

from __future__ import annotations

import math
import numbers
import sys
import types
from collections.abc import Callable

import torch

__all__ = ["MARKERS", "report", "results", "is_close", "grade_value", "grade_choice", "grade_callable"]

#: The plain-text verdict markers (the first word(s) of every checker line).
MARKERS: dict[str, str] = {"pass": "PASS", "fail": "TRY AGAIN", "todo": "TO DO"}
_RESULTS: dict[str, bool | None] = {}


def report(exercise: str, ok: bool | None, message: str = "", hint: str = "") -> bool:
    """Print the one-line verdict and return ``bool(ok)`` (``ok=None``: not answered yet)."""
    hint_txt = f" (hint: {hint})" if hint else ""
    if ok is None:
        line = f"{MARKERS['todo']} [{exercise}] not answered yet{hint_txt}"
    elif ok:
        line = f"{MARKERS['pass']} [{exercise}] correct{': ' + message if message else ''}"
    else:
        line = f"{MARKERS['fail']} [{exercise}] not yet: {message}{hint_txt}"
    print(" ".join(line.split("\n")))
    _RESULTS[exercise] = None if ok is None else bool(ok)
    return bool(ok)


def results() -> dict[str, bool | None]:
    """The latest verdict of every exercise checked in this session (``None``: not answered yet)."""
    return dict(_RESULTS)


def _semicolon_silences_without_history() -> None:
    """Make a trailing ``;`` silence a checker cell's True/False also when the cell runs without history.

    IPython decides "does the cell end with ';'?" from the last entry of its input history, which is not written
    when a cell is executed with ``store_history=False`` (nbval does that). It then echoes the checker's return
    value under nbval but not in JupyterLab, and a committed notebook cannot satisfy both. This reads the cell
    being run instead (``displayhook.exec_result``); with history, the answer is the same as IPython's.
    """
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    hook = getattr(shell, "displayhook", None)
    if hook is None or getattr(hook, "_lorakit_quiet", False) or not hasattr(hook, "semicolon_at_end_of_expression"):
        return
    original = hook.quiet

    def quiet(self) -> bool:
        result = getattr(self, "exec_result", None)
        raw = getattr(getattr(result, "info", None), "raw_cell", None)
        return self.semicolon_at_end_of_expression(raw) if isinstance(raw, str) else original()

    hook.quiet = types.MethodType(quiet, hook)
    hook._lorakit_quiet = True


_semicolon_silences_without_history()


def is_close(answer: object, expected: object, rtol: float = 1e-6, atol: float = 0.0) -> bool:
    """Numbers or tensors equal within ``rtol``/``atol`` (shapes must match for tensors)."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(answer, torch.Tensor) or answer.shape != expected.shape:
            return False
        return bool(torch.allclose(answer.double(), expected.double(), rtol=rtol, atol=atol))
    if isinstance(answer, bool) or not isinstance(answer, numbers.Real):
        return False
    return math.isclose(float(answer), float(expected), rel_tol=rtol, abs_tol=atol)


def grade_value(
    exercise: str, answer: object, expected: object, hint: str = "", rtol: float = 1e-6, atol: float = 0.0
) -> bool:
    """Grade a number or tensor against the expected one."""
    if answer is None:
        return report(exercise, None, hint=hint)
    if is_close(answer, expected, rtol, atol):
        return report(exercise, True, f"{_show(answer)}")
    if isinstance(expected, torch.Tensor) and isinstance(answer, torch.Tensor) and answer.shape != expected.shape:
        return report(exercise, False, f"shape {tuple(answer.shape)}, expected {tuple(expected.shape)}", hint)
    return report(exercise, False, f"got {_show(answer)}", hint)


def grade_choice(exercise: str, answer: object, correct: str, explanations: dict[str, str]) -> bool:
    """Grade a multiple-choice answer (a key of ``explanations``); explains the chosen option."""
    if answer is None:
        return report(exercise, None, hint=f"answer one of {sorted(explanations)}")
    key = str(answer).strip().lower()
    if key not in explanations:
        return report(exercise, False, f"{answer!r} is not one of the options {sorted(explanations)}")
    return report(exercise, key == correct, explanations[key])


def grade_callable(
    exercise: str,
    fn: Callable | None,
    reference: Callable,
    cases: list[tuple],
    hint: str = "",
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> bool:
    """Grade a learner's function on ``cases`` (argument tuples) against ``reference``."""
    if fn is None:
        return report(exercise, None, hint=hint)
    for args in cases:
        try:
            got = fn(*args)
        except Exception as err:  # noqa: BLE001 - report any learner error as feedback
            return report(exercise, False, f"raised {type(err).__name__}: {err}", hint)
        want = reference(*args)
        if isinstance(want, tuple):
            same = isinstance(got, tuple) and len(got) == len(want)
            if not (same and all(is_close(g, w, rtol, atol) for g, w in zip(got, want, strict=True))):
                return report(exercise, False, "differs from the reference on a test case", hint)
        elif not is_close(got, want, rtol, atol):
            return report(exercise, False, "differs from the reference on a test case", hint)
    return report(exercise, True, f"matches the reference on {len(cases)} cases")


def _show(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value)
