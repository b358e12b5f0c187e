"""Checkers for notebook 03 (scaling: ``alpha/r`` vs ``alpha/sqrt(r)``), "Check yourself" section.

Every expected value is computed with :func:`lorakit.lora_scaling` (notebook 03, eq. 1) from the
exercise's parameters; nothing is hard-coded.
"""

from __future__ import annotations

import math

from lorakit.check import grade_choice, grade_value, is_close, report
from lorakit.lora import lora_scaling

__all__ = ["q1", "q2", "q3", "q4", "q5", "q6", "Q1_R", "Q1_ALPHA", "Q2_R", "Q5_R", "Q5_ALPHA"]

Q1_R, Q1_ALPHA = 64, 16
Q2_R = 256
Q5_R, Q5_ALPHA = 16, 32


def q1(answer: object) -> bool:
    """03.1: ``(alpha/r, alpha/sqrt(r))`` for ``r = Q1_R``, ``alpha = Q1_ALPHA`` (eq. 1), as a tuple."""
    hint = f"a tuple (LoRA scaling, rsLoRA scaling) for r={Q1_R}, alpha={Q1_ALPHA}"
    if answer is None:
        return report("03.1", None, hint=hint)
    want = (lora_scaling(Q1_R, Q1_ALPHA), lora_scaling(Q1_R, Q1_ALPHA, rslora=True))
    if not isinstance(answer, (tuple, list)) or len(answer) != 2:
        return report("03.1", False, f"expected a pair of numbers, got {answer!r}", hint)
    if all(is_close(a, w, rtol=1e-4) for a, w in zip(answer, want, strict=True)):
        return report("03.1", True, f"alpha/r = {want[0]:.4g}, alpha/sqrt(r) = {want[1]:.4g}")
    if all(is_close(a, w, rtol=1e-4) for a, w in zip(answer, want[::-1], strict=True)):
        return report("03.1", False, "the two values are swapped", hint)
    return report("03.1", False, f"got {answer!r}", hint)


def q2(answer: object) -> bool:
    """03.2: the ratio rsLoRA / LoRA scaling at ``r = Q2_R`` (any alpha): ``sqrt(r)``."""
    want = lora_scaling(Q2_R, 1.0, rslora=True) / lora_scaling(Q2_R, 1.0)
    hint = f"divide alpha/sqrt(r) by alpha/r at r={Q2_R}; alpha cancels"
    return grade_value("03.2", answer, want, hint=hint, rtol=1e-4)


def q3(answer: object) -> bool:
    """03.3 (choice): at fixed alpha and learning rate, which scaling shrinks the bypass as r grows."""
    return grade_choice("03.3", answer, "a", {
        "a": "alpha/r: the first-step gradient of B scales like gamma*sqrt(r) = alpha/sqrt(r) -> 0, "
             "and under SGD the first-step function change like gamma^2*r = alpha^2/r -> 0.",
        "b": "alpha/sqrt(r) is the rank-stabilised choice: gamma*sqrt(r) = alpha stays constant.",
        "c": "only one of them shrinks: compare gamma*sqrt(r) for gamma = alpha/r and alpha/sqrt(r).",
        "d": "one of them does shrink: compute gamma*sqrt(r) for gamma = alpha/r at r = 1 and r = 256.",
    })


def grad_b_exponent(rslora: bool, r1: int = 1, r2: int = 256) -> float:
    """Log-log slope of ``||dL/dB||_F ∝ gamma_r * sqrt(r)`` (notebook 03, eq. 5) between two ranks."""
    g1 = lora_scaling(r1, 1.0, rslora) * math.sqrt(r1)
    g2 = lora_scaling(r2, 1.0, rslora) * math.sqrt(r2)
    return math.log(g2 / g1) / math.log(r2 / r1)


def q4(answer: object) -> bool:
    """03.4: the exponent p in ``||dL/dB||_F ∝ r^p`` at the first step under ``alpha/r``."""
    return grade_value("03.4", answer, grad_b_exponent(rslora=False),
                       hint="dL/dB = gamma g (Ax)^T has r columns of r-independent size; multiply by gamma = alpha/r",
                       atol=1e-3)


def q5(answer: object) -> bool:
    """03.5: the rsLoRA alpha giving the same scaling as LoRA with ``alpha = Q5_ALPHA`` at ``r = Q5_R``."""
    want = lora_scaling(Q5_R, Q5_ALPHA) / lora_scaling(Q5_R, 1.0, rslora=True)
    return grade_value("03.5", answer, want,
                       hint=f"solve alpha'/sqrt({Q5_R}) = {Q5_ALPHA}/{Q5_R} for alpha'", rtol=1e-4)


def q6(answer: object, d_in: int = 128, d_out: int = 256) -> bool:
    """03.6: the rank the rule of thumb ``sqrt(min(d_in, d_out)) / 4`` suggests for a ``d_in x d_out`` layer."""
    from lorakit.pitfalls.lora import rank_rule_of_thumb

    return grade_value("03.6", answer, rank_rule_of_thumb(d_in, d_out), rtol=1e-3,
                       hint=f"min({d_in}, {d_out}) first, then its square root, then divide by 4 (no rounding)")
