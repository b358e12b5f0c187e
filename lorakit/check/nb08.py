"""Checks for the "Check yourself" exercises of notebook 08 (QLoRA).

Every expected answer is computed here with :mod:`lorakit` (``lorakit.nf4``, ``lorakit.memory``,
``lorakit.functional``) or from the arguments, never hard-coded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lorakit.check import grade_callable, grade_choice, grade_value
from lorakit.functional import lora_linear
from lorakit.memory import llama_linear_shapes, llama_shape
from lorakit.nf4 import dequantize_nf4, quantize_nf4, storage_bytes

__all__ = [
    "q1", "q2", "q3", "q4", "q5", "nf4_dq_bits_per_parameter", "linear_nf4_gib", "qlora_forward_reference",
]


def nf4_dq_bits_per_parameter(blocksize: int = 64, dq_blocksize: int = 256) -> float:
    """Notebook 08, eq. (4): bits per weight of NF4 with double quantization, for a large tensor.

    Measured from :func:`lorakit.nf4.storage_bytes` on a tensor of ``1024 * blocksize * dq_blocksize``
    weights, so the per-tensor constants (the fp32 mean of the absmax values) are negligible:
    ``4 + 8 / blocksize + 32 / (blocksize * dq_blocksize)``.
    """
    n = 1024 * blocksize * dq_blocksize
    return 8 * storage_bytes(n, blocksize, True, dq_blocksize) / n


def linear_nf4_gib(size: str = "65B", blocksize: int = 64, double_quant: bool = True) -> float:
    """Notebook 08, eq. (5): GiB of all the decoder linear weights of LLaMA ``size`` stored in NF4.

    Seven projections per layer (``q k v o gate up down``), each quantized as its own tensor with
    :func:`lorakit.nf4.storage_bytes`; embeddings, output head and norms are not included.
    """
    per_layer = sum(storage_bytes(i * o, blocksize, double_quant) for i, o in llama_linear_shapes(size).values())
    return llama_shape(size)["n_layers"] * per_layer / 2**30


def qlora_forward_reference(
    x: torch.Tensor, q: object, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Notebook 08, eq. (1): ``x dequant(W)^T + scaling * (x A^T) B^T`` with the dequantized weight in x's dtype."""
    return lora_linear(x, dequantize_nf4(q, dtype=x.dtype), None, lora_A, lora_B, scaling)


def q1(answer: object, blocksize: int = 64, dq_blocksize: int = 256) -> bool:
    """08.1: bits per parameter of NF4 + double quantization (blocks of 64, second-level blocks of 256)."""
    return grade_value(
        "08.1", answer, nf4_dq_bits_per_parameter(blocksize, dq_blocksize), rtol=1e-4,
        hint=f"4 bits of code + one 8-bit constant per {blocksize} weights + one fp32 scale per "
        f"{blocksize}x{dq_blocksize} weights; give at least 4 decimals",
    )


def q2(answer: object, size: str = "65B") -> bool:
    """08.2: GiB of LLaMA ``size``'s decoder linear weights in NF4 with double quantization."""
    llama_shape(size)  # ValueError naming the sizes for an unknown one
    return grade_value(
        "08.2", answer, linear_nf4_gib(size), rtol=2e-3,
        hint=f"sum in*out over the 7 projections of one layer (llama_linear_shapes({size!r})), times the layer "
        "count, times the NF4+DQ bits per parameter of 08.1, divided by 8 and by 2**30",
    )


def _q3_cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(8)
    cases = []
    for (n, d_in, d_out, r, scaling) in ((4, 64, 32, 2, 2.0), (3, 128, 96, 8, 0.5), (1, 256, 64, 4, 4.0)):
        w = torch.randn(d_out, d_in, generator=gen) * 0.05
        q = quantize_nf4(w, blocksize=64, double_quant=True)
        x = torch.randn(n, d_in, generator=gen)
        lora_A = torch.randn(r, d_in, generator=gen) * 0.1
        lora_B = torch.randn(d_out, r, generator=gen) * 0.1
        cases.append((x, q, lora_A, lora_B, scaling))
    return cases


def q3(fn: Callable | None) -> bool:
    """08.3: write ``qlora_forward(x, q, lora_A, lora_B, scaling)`` (eq. 1) with lorakit.nf4's dequantize_nf4."""
    return grade_callable(
        "08.3", fn, qlora_forward_reference, _q3_cases(), rtol=1e-4, atol=1e-5,
        hint="dequantize_nf4(q, dtype=x.dtype) gives W [out, in]; y = x W^T + scaling * (x A^T) B^T",
    )


def q4(answer: object) -> bool:
    """08.4: where do gradients go in a QLoRA layer?"""
    return grade_choice(
        "08.4",
        answer,
        "b",
        {
            "a": "no: the 4-bit codes are integers in a uint8 buffer, not a Parameter; nothing ever updates them "
            "(section 1 found no gradient on the base)",
            "b": "only A and B are trained, but dL/dX = G (dequant(W) + s B A) still passes through the "
            "dequantized base (eq. 2), which is how the gradient reaches the adapters of earlier layers",
            "c": "no: a frozen weight gets no gradient, but the input gradient still goes through it; section 1 "
            "measured dL/dX through the base path equal to G dequant(W), and without it the layers below "
            "would receive almost no signal",
            "d": "no: no base-weight gradient is ever formed (it would cost 2 bytes per parameter, like the "
            "weights themselves); the backward only needs G dequant(W) for dL/dX",
        },
    )


def q5(answer: object) -> bool:
    """08.5: what happens when a QLoRA adapter is merged and the result requantized to NF4?"""
    return grade_choice(
        "08.5",
        answer,
        "c",
        {
            "a": "no: NF4 is a fixed 16-level grid per block; W + s B A is generally off the grid, so rounding "
            "it again adds a new error of up to half a step per weight (section 4 measured it)",
            "b": "no: the bf16 merge keeps the update (bf16 rounding only) but the layer becomes dense, 2 bytes "
            "per weight, four times the NF4 storage",
            "c": "a weight's code only changes if s B A moves it across the midpoint to the next NF4 level; an "
            "update small next to half a step is rounded away (the weight falls back to its old level and its "
            "update is lost), a larger one lands on a new level with a new rounding error; keep the adapter "
            "unmerged on the 4-bit base or merge into bf16",
            "d": "no: quantizing s B A on its own grid and adding codes is not defined (the two blocks have "
            "different absmax scales), and the sum would still have to be rounded to one grid",
        },
    )
