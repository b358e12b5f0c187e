"""Checks for the "Check yourself" exercises of notebook 04 (merge, unmerge and latency).

Every expected answer is computed here from lorakit or from the arguments, never hard-coded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lorakit.check import grade_callable, grade_choice, grade_value
from lorakit.lora import lora_scaling

__all__ = ["q1", "q2", "q3", "q4", "q5", "merged_weight_reference", "bypass_flop_overhead"]


def merged_weight_reference(
    W0: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float, r: int, rslora: bool = False
) -> torch.Tensor:
    """Notebook 04, eq. (2): ``W' = W0 + s * B @ A`` with ``s = alpha/r`` (or ``alpha/sqrt(r)``, rsLoRA)."""
    return W0 + lora_scaling(r, alpha, rslora) * (B @ A)


def bypass_flop_overhead(d_in: int, d_out: int, r: int) -> float:
    """Notebook 04, eq. (5): bypass FLOPs over base FLOPs, ``r (d_in + d_out) / (d_in d_out)``.

    The per-token counts ``2 r (d_in + d_out)`` and ``2 d_in d_out`` share the factor 2 and the token count.
    """
    for name, v in (("d_in", d_in), ("d_out", d_out), ("r", r)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    return r * (d_in + d_out) / (d_in * d_out)


def _cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(4)
    cases = []
    for out_f, in_f, r, alpha in ((3, 5, 2, 4), (6, 4, 1, 1), (8, 8, 4, 16)):
        W0 = torch.randn(out_f, in_f, generator=gen, dtype=torch.float64)
        A = torch.randn(r, in_f, generator=gen, dtype=torch.float64)
        B = torch.randn(out_f, r, generator=gen, dtype=torch.float64)
        cases.append((W0, A, B, alpha, r))
    return cases


def q1(fn: Callable | None) -> bool:
    """04.1: ``fn(W0, A, B, alpha, r)`` must return the merged weight ``W0 + (alpha/r) B @ A``."""
    return grade_callable(
        "04.1", fn, lambda W0, A, B, alpha, r: merged_weight_reference(W0, A, B, alpha, r), _cases(),
        hint="B is [out, r], A is [r, in]; do not forget the scaling alpha/r",
    )


def q2(answer: object) -> bool:
    """04.2: what does ``merge()`` do on a layer that is already merged (lorakit)?"""
    return grade_choice(
        "04.2",
        answer,
        "c",
        {
            "a": "no: adding s*B@A a second time would double the update, which is exactly why lorakit refuses",
            "b": "no: lorakit does not raise; the layer stays usable and merged",
            "c": "it emits a lorakit.MergeWarning and leaves the weight unchanged (idempotent)",
            "d": "no: merge never removes the update; only unmerge() subtracts it",
        },
    )


def q3(answer: object) -> bool:
    """04.3: the largest relative error of rounding a number to bfloat16 (round to nearest), ``eps/2``."""
    expected = torch.finfo(torch.bfloat16).eps / 2
    return grade_value(
        "04.3", answer, expected, rtol=1e-9,
        hint="bf16 keeps 8 significant bits; the gap above 1.0 is torch.finfo(torch.bfloat16).eps and "
        "rounding to nearest errs by at most half a gap",
    )


def q4(answer: object, d_in: int = 4096, d_out: int = 11008, r: int = 16) -> bool:
    """04.4: predicted relative FLOP overhead of an unmerged LoRA layer, ``r (d_in + d_out) / (d_in d_out)``."""
    expected = bypass_flop_overhead(d_in, d_out, r)
    return grade_value(
        "04.4", answer, expected, rtol=1e-3,
        hint="bypass 2*T*r*(d_in+d_out) FLOPs over the base 2*T*d_in*d_out; answer a fraction, not a percentage",
    )


def q5(answer: object) -> bool:
    """04.5 (choice): why the unmerged bf16 layer's worst output error exceeds the merged layer's."""
    return grade_choice("04.5", answer, "b", {
        "a": "no: the merged layer rounds its weights, which the unmerged layer does not; that alone would make "
             "the merged one worse, yet it is the better of the two in the worst case",
        "b": "yes: the unmerged layer rounds W0 x to bf16 and then the sum with the bypass again; the merged layer "
             "rounds each output once, and its weight-rounding errors largely cancel inside the dot products",
        "c": "no: lorakit keeps the adapter in fp32 on a bf16 base, so the bypass itself is accurate",
        "d": "no: both layers see the same bf16 input; the input rounding is common to both",
    })
