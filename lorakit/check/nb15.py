"""Checks for the "Check yourself" exercises of notebook 15 (from PyTorch to a kernel).

Every expected answer is computed here with :mod:`lorakit.kernels.roofline` and :mod:`lorakit.nf4` from the
exercise's parameters, never hard-coded. Nothing here needs Triton.
"""

from __future__ import annotations

import torch

from lorakit.check import grade_callable, grade_choice, grade_value
from lorakit.kernels.roofline import dequant_bytes_per_weight, fused_bytes_per_weight, gather_bytes, time_bound
from lorakit.nf4 import QuantizedTensor, nf4_code, unpack_codes

__all__ = ["Q2_BANDWIDTH", "Q2_SHAPE", "Q5_SHAPE", "q1", "q2", "q3", "q4", "q5", "unpack_byte"]

#: 15.2: a [4096, 4096] layer at 1 token, on a GPU moving 3e12 bytes/s.
Q2_SHAPE, Q2_BANDWIDTH = (4096, 4096), 3e12
#: 15.5: (tokens, rank, d_in, d_out) of the decode batch.
Q5_SHAPE = (32, 16, 4096, 4096)


def unpack_byte(byte: int) -> tuple[int, int]:
    """The two 4-bit codes of one packed byte, ``(element 2j, element 2j + 1)``, by :func:`lorakit.nf4.unpack_codes`."""
    q = QuantizedTensor(torch.tensor([byte], dtype=torch.uint8), torch.ones(1), torch.Size([2]), torch.float32, 64,
                        nf4_code())
    first, second = unpack_codes(q).tolist()
    return first, second


def q1(answer: object, blocksize: int = 64, double_quant: bool = True) -> bool:
    """15.1: bytes one weight moves through the fused 4-bit matmul (blocksize 64, double-quantized absmax)."""
    return grade_value("15.1", answer, fused_bytes_per_weight(blocksize, double_quant), rtol=1e-3,
                       hint="half a byte of code plus the weight's share of its block's 8-bit absmax code and of the "
                            "fp32 scale shared by 256 blocks; nothing is written per weight")


def q2(answer: object) -> bool:
    """15.2: microseconds, at least, for dequantize-then-matmul of a ``Q2_SHAPE`` layer at 1 token (eq. 1)."""
    n = Q2_SHAPE[0] * Q2_SHAPE[1]
    want = 1e6 * time_bound(n, dequant_bytes_per_weight(2) + 2, Q2_BANDWIDTH)
    return grade_value("15.2", answer, want, rtol=1e-2,
                       hint="the dequantize pass reads the packed weight and writes it in bf16 (2 bytes), then the "
                            "matmul reads those 2 bytes again; time = bytes / bandwidth, in microseconds")


def q3(fn: object) -> bool:
    """15.3: a function ``byte -> (code of element 2j, code of element 2j + 1)``, as the kernel's first lines."""
    cases = [(0xA7,), (0x0F,), (0xF0,), (0x00,), (0x5C,), (0xFF,)]
    return grade_callable("15.3", fn, unpack_byte, cases,
                          hint="the first element sits in the high nibble: shift right by 4; the second: mask with 15")


def q4(answer: object) -> bool:
    """15.4 (choice): why the kernels are launched with ``enable_fp_fusion=False``."""
    return grade_choice("15.4", answer, "b", {
        "a": "no: a fused multiply-add is at least as fast; switching it off costs (a little) speed, never buys any",
        "b": "the double-quantized absmax is dynamic[c] * scale + offset: the reference and bitsandbytes round after "
             "the multiply and again after the add; an FMA rounds once, so some absmax values, and every weight of "
             "their block, would differ in the last bit (section 2 counts how many)",
        "c": "no: every GPU Triton targets has fused multiply-add; the compiled PTX with fusion on contains fma.rn.f32",
        "d": "no: tl.dot accumulates in float32 whatever the fusion option; the option only decides whether a "
             "separate multiply and add may be contracted",
    })


def q5(answer: object) -> bool:
    """15.5: bytes gather + bmm spends on its gathered copies for a ``Q5_SHAPE`` bf16 batch (write, then read)."""
    tokens, rank, d_in, d_out = Q5_SHAPE
    return grade_value("15.5", answer, gather_bytes(tokens, rank, d_in, d_out, 2), rtol=1e-3,
                       hint="each row gets its own copy of A [r, d_in] and B [d_out, r], 2 bytes a number; the copy is "
                            "written once and read once by bmm")
