"""Checks for the "Check yourself" exercises of notebook 09 (DoRA).

Every expected answer is computed here from lorakit or from the arguments, never hard-coded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lorakit.analysis import rank_for_energy
from lorakit.check import grade_callable, grade_choice, grade_value, report
from lorakit.dora import dora_weight_norm, magnitude_direction_change

__all__ = ["Q6_SINGULAR_VALUES", "q1", "q2", "q3", "q4", "q5", "q6", "dora_trainable_parameters",
           "dora_weight_reference"]

#: 09.6: the singular values of an update dW (notebook 09, section 7): how many directions hold 90 % of ||dW||^2?
Q6_SINGULAR_VALUES = (4.0, 2.0, 1.5, 1.0, 0.8, 0.5, 0.4, 0.3, 0.2, 0.1)


def dora_weight_reference(W0: torch.Tensor, A: torch.Tensor, B: torch.Tensor, m: torch.Tensor,
                          scaling: float) -> torch.Tensor:
    """Notebook 09, eq. (2): ``W' = m * (W0 + s B A) / ||W0 + s B A||`` with the norm per output row."""
    V = W0 + scaling * (B @ A)
    return (m / dora_weight_norm(W0, A, B, scaling))[:, None] * V


def dora_trainable_parameters(d_in: int, d_out: int, r: int) -> int:
    """Notebook 09, eq. (4): ``r (d_in + d_out)`` for A and B plus ``d_out`` magnitudes."""
    for name, v in (("d_in", d_in), ("d_out", d_out), ("r", r)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    return r * (d_in + d_out) + d_out


def _weight_cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(9)
    cases = []
    for out_f, in_f, r, s in ((3, 5, 2, 2.0), (6, 4, 1, 0.5), (5, 5, 3, 1.0)):  # non-square: the axis matters
        W0 = torch.randn(out_f, in_f, generator=gen, dtype=torch.float64)
        A = torch.randn(r, in_f, generator=gen, dtype=torch.float64)
        B = torch.randn(out_f, r, generator=gen, dtype=torch.float64)
        m = torch.rand(out_f, generator=gen, dtype=torch.float64) + 0.5
        cases.append((W0, A, B, m, s))
    return cases


def q1(fn: Callable | None) -> bool:
    """09.1: ``fn(W0, A, B, m, scaling)`` must return DoRA's merged weight (eq. 2)."""
    return grade_callable(
        "09.1", fn, dora_weight_reference, _weight_cases(),
        hint="V = W0 + scaling * B @ A; divide every ROW of V by its norm (dim=1), then scale row i by m[i]",
    )


def q2(answer: object, d_in: int = 4096, d_out: int = 11008, r: int = 16) -> bool:
    """09.2: trainable parameters of one DoRA layer, ``r (d_in + d_out) + d_out``."""
    return grade_value(
        "09.2", answer, dora_trainable_parameters(d_in, d_out, r), rtol=0,
        hint="LoRA's r*(d_in + d_out) plus one magnitude per output row (not per input column)",
    )


def q3(answer: object) -> bool:
    """09.3: what does detaching ``||W0 + sBA||`` change in the backward pass?"""
    return grade_choice(
        "09.3",
        answer,
        "b",
        {
            "a": "no: m never enters the norm, so dL/dm is the same with or without the detach",
            "b": "the gradient reaching V = W0 + sBA is no longer projected orthogonally to each row's direction; "
                 "dL/dm and the forward value are unchanged",
            "c": "no: the detach only affects the backward pass; the forward value is identical",
            "d": "no: the gradients of A and B change (notebook section 3 measures by how much)",
        },
    )


def q4(answer: object) -> bool:
    """09.4: the row norms of a merged DoRA weight."""
    return grade_choice(
        "09.4",
        answer,
        "b",
        {
            "a": "no: ||W0|| is only the starting value of m; after training the rows have the learned length",
            "b": "each row of W' = m * V/||V|| has norm m[i]: the learned magnitude",
            "c": "no: the direction V/||V|| has unit rows, but W' multiplies them by m",
            "d": "no: DoRA divides by ||W0 + sBA||, which is exactly what removes that length",
        },
    )


def _change_cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(10)
    cases = []
    for out_f, in_f in ((4, 6), (7, 3)):
        W0 = torch.randn(out_f, in_f, generator=gen, dtype=torch.float64)
        Wt = W0 * (1 + 0.3 * torch.rand(out_f, 1, generator=gen, dtype=torch.float64))
        Wt = Wt + 0.2 * torch.randn(out_f, in_f, generator=gen, dtype=torch.float64)
        cases.append((Wt, W0))
    return cases


def q5(fn: Callable | None) -> bool:
    """09.5: ``fn(W_t, W_0) -> (ΔM, ΔD)`` per output row (the paper's analysis, section 3)."""
    return grade_callable(
        "09.5", fn, magnitude_direction_change, _change_cases(),
        hint="norms and cosines over dim=1 (each output row); average |Δnorm| and (1 - cos) over the rows",
    )


def q6(answer: object, singular_values: tuple[float, ...] = Q6_SINGULAR_VALUES, fraction: float = 0.9) -> bool:
    """09.6: the smallest rank r whose best rank-r approximation keeps ``fraction`` of ``||dW||_F^2``."""
    expected = rank_for_energy(torch.tensor(singular_values, dtype=torch.float64), fraction)
    if answer is not None and (isinstance(answer, bool) or not isinstance(answer, int)):
        return report("09.6", False, f"answer a rank, an int, got {answer!r}")
    return grade_value(
        "09.6", answer, expected, rtol=0.0,
        hint="the best rank-r approximation keeps sum of the r largest s_i^2 over sum of all s_i^2 (Eckart-Young): "
        "square the singular values, not the values themselves, and find the first r reaching the fraction",
    )
