"""Checks for the "check yourself" exercises of notebook 01 (LoRA forward, parameter count, gradients).

Expected values come from lorakit (``lora_parameter_summary``, autograd through
``lorakit.functional.lora_linear``) or from the exercise's own arguments, never hard-coded numbers.
"""

from __future__ import annotations

import torch

from lorakit.check import grade_callable, grade_choice, grade_value
from lorakit.functional import lora_linear
from lorakit.widgets import lora_parameter_summary

#: Exercise 01.1: LLaMA-7B's MLP up_proj maps 4096 -> 11008; rank 16.
Q1_SHAPE = {"d_in": 4096, "d_out": 11008, "r": 16}
#: Exercise 01.4: one input row through a square 4096 x 4096 layer with a rank-16 bypass.
Q4_SHAPE = {"n": 1, "d_in": 4096, "d_out": 4096, "r": 16}


def q1(answer: object) -> bool:
    """01.1: trainable LoRA parameters ``r (d_in + d_out)`` for :data:`Q1_SHAPE` (notebook 01, eq. 5)."""
    expected = lora_parameter_summary(**Q1_SHAPE)["lora"]
    return grade_value("01.1", answer, expected, hint="A is [r, d_in] and B is [d_out, r]; add their sizes")


def q2(answer: object) -> bool:
    """01.2: with the default init (A Kaiming, B = 0), which gradient is exactly zero on the first step?"""
    return grade_choice("01.2", answer, "a", {
        "a": "yes: dL/dA = s B^T g x^T contains B = 0, so it is exactly 0; dL/dB = s g (Ax)^T is not",
        "b": "no: dL/dB = s g (Ax)^T needs only A (nonzero) and g; it is the gradient that moves first",
        "c": "no: dL/dB = s g (Ax)^T has no factor B, so it is nonzero; B moves on step 1, A from step 2",
        "d": "no: dL/dA = s B^T g x^T has the factor B = 0",
    })


def reference_grad_A(x: torch.Tensor, B: torch.Tensor, g: torch.Tensor, scaling: float) -> torch.Tensor:
    """dL/dA by autograd through :func:`lorakit.functional.lora_linear`, for ``L = sum(h * g)``.

    ``x [n, in]``, ``B [out, r]``, ``g = dL/dh [n, out]``. dL/dA does not depend on A or W, so both are
    drawn at random here (seeded) only to build the layer.
    """
    gen = torch.Generator().manual_seed(0)
    n_in, (n_out, r) = x.shape[1], B.shape
    weight = torch.randn(n_out, n_in, generator=gen, dtype=x.dtype)
    A = torch.randn(r, n_in, generator=gen, dtype=x.dtype).requires_grad_(True)
    h = lora_linear(x, weight, None, A, B, scaling)
    (grad_A,) = torch.autograd.grad(h, A, grad_outputs=g)
    return grad_A


def q3_cases() -> list[tuple]:
    """Seeded test cases ``(x, B, g, scaling)`` of several shapes, float64."""
    gen = torch.Generator().manual_seed(1)
    cases = []
    for n, d_in, d_out, r, s in [(1, 5, 3, 2, 1.0), (7, 6, 4, 3, 2.0), (16, 12, 20, 4, 0.5)]:
        x = torch.randn(n, d_in, generator=gen, dtype=torch.float64)
        B = torch.randn(d_out, r, generator=gen, dtype=torch.float64)
        g = torch.randn(n, d_out, generator=gen, dtype=torch.float64)
        cases.append((x, B, g, s))
    return cases


def q3(fn: object) -> bool:
    """01.3: implement ``grad_A(x, B, g, scaling) -> dL/dA`` (batched eq. 3) with plain tensor ops."""
    return grade_callable(
        "01.3", fn, reference_grad_A, q3_cases(),
        hint="per row dL/dA = s (B^T g) x^T, shape [r, d_in]; a batch sums that over its rows",
    )


def bypass_flops(n: int, d_in: int, d_out: int, r: int, order: str) -> int:
    """FLOPs (2 per multiply-add) of the bypass on ``n`` rows: ``"factored"`` B(Ax) or ``"materialised"`` (BA)x."""
    if order == "factored":
        return 2 * n * r * d_in + 2 * n * d_out * r
    if order == "materialised":
        return 2 * d_out * r * d_in + 2 * n * d_out * d_in
    raise ValueError(f"order must be 'factored' or 'materialised', got {order!r}")


def q4(answer: object) -> bool:
    """01.4: how many times more FLOPs does (BA)x cost than B(Ax) for :data:`Q4_SHAPE`?"""
    expected = bypass_flops(**Q4_SHAPE, order="materialised") / bypass_flops(**Q4_SHAPE, order="factored")
    return grade_value(
        "01.4", answer, expected, rtol=1e-3,
        hint="(BA)x = forming BA (d_out*r*d_in multiply-adds) plus a d_out x d_in mat-vec; B(Ax) = r*d_in + d_out*r",
    )
