"""Immediate feedback for the "check yourself" exercises at the end of every notebook.

Each notebook has a module ``lorakit.check.nbNN`` whose functions take the learner's answer, compute
the expected one with lorakit (never a hard-coded number), and print one line::

    ✅ [01.2] correct: ...        ❌ [01.2] not yet: <what is off> (hint: ...)
    ⏳ [01.2] not answered yet (hint: ...)

and return True/False, so a teacher can also assert on them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

__all__ = ["report", "is_close", "grade_value", "grade_choice", "grade_callable"]


def report(exercise: str, ok: bool | None, message: str = "", hint: str = "") -> bool:
    """Print the one-line verdict and return ``bool(ok)`` (``ok=None``: not answered yet)."""
    hint_txt = f" (hint: {hint})" if hint else ""
    if ok is None:
        print(f"⏳ [{exercise}] not answered yet{hint_txt}")
    elif ok:
        print(f"✅ [{exercise}] correct{': ' + message if message else ''}")
    else:
        print(f"❌ [{exercise}] not yet: {message}{hint_txt}")
    return bool(ok)


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
