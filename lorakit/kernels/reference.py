"""The pure-PyTorch references the Triton kernels must equal, and how close "equal" is (notebook 15).

Importable without Triton (this module uses only PyTorch and lorakit):

=====================================  ==================================================================
kernel (``lorakit.kernels``)           reference, and the agreement required
=====================================  ==================================================================
``nf4_dequant.dequantize_nf4``         :func:`lorakit.nf4.dequantize_nf4`: bit for bit (one float32 product,
                                       one rounding, on both sides)
``nf4_dequant.decode_weight``          :func:`decode_weight_reference` (:mod:`lorakit.nf4.kernels`): bit for bit
``nf4_matmul.nf4_matmul``              :func:`nf4_matmul_reference`: within :func:`agreement_bound`
``nf4_matmul.nf4_matmul_grad_x``       :func:`nf4_matmul_grad_x_reference`: within :func:`agreement_bound`
``bgmv.bgmv_shrink`` ... ``sgmv_*``    ``lorakit.serving.kernels`` (``backend="torch"``) and its float64
                                       ``reference_delta``: within :func:`agreement_bound`
=====================================  ==================================================================

Why a bound and not bit equality for the products: both sides add the same float32 products, in a different
order (the kernel in tiles, PyTorch in its own blocking), and float32 addition is not associative. The classic
bound for a sum of ``k`` products (Higham, *Accuracy and Stability of Numerical Algorithms*, 2002, eq. 3.5) is
``|fl(s) - s| <= gamma_k * sum |x_i w_i|`` with ``gamma_k = k u / (1 - k u)``, ``u = 2**-24``; two such sums differ
by at most twice that. Rounding the two float32 results to the output dtype can then differ by one more spacing of
that dtype. :func:`agreement_bound` is that sum, elementwise; a kernel bug (a wrong nibble, a wrong block's scale,
a missed tile) is orders of magnitude above it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lorakit.nf4 import kernels as nf4_kernels

__all__ = [
    "agreement_bound", "decode_weight_reference", "fp32_unit_roundoff", "nf4_matmul_grad_x_reference",
    "nf4_matmul_reference",
]

#: float32's unit roundoff ``u = 2**-24`` (half the spacing of floats in [1, 2)).
fp32_unit_roundoff = 2.0**-24


def decode_weight_reference(
    packed: Tensor, absmax: Tensor, code: Tensor, shape: tuple[int, ...], blocksize: int, dtype: torch.dtype,
    nested_absmax: Tensor | None = None, nested_offset: Tensor | float | None = None,
    nested_code: Tensor | None = None, nested_blocksize: int = 256,
) -> Tensor:
    """The weight as :mod:`lorakit.nf4` decodes it (pure PyTorch), from the arguments ``nf4_dequant.decode_weight``
    takes: the 16 levels ``code`` (not the pair table); ``nested_code`` defaults to the 8-bit dynamic code."""
    if nested_absmax is not None and nested_code is None:
        from lorakit.nf4.codes import dynamic_code_on

        nested_code = dynamic_code_on(absmax.device)
    return nf4_kernels.decode_weight(packed, absmax, nf4_kernels.pair_table(code), tuple(shape), blocksize, dtype,
                                     nested_absmax, nested_offset, nested_code, nested_blocksize)


def nf4_matmul_reference(
    x: Tensor, packed: Tensor, absmax: Tensor, code: Tensor, shape: tuple[int, int], blocksize: int,
    dtype: torch.dtype, bias: Tensor | None = None, **nested: object,
) -> Tensor:
    """``x dequant(W)^T + bias`` as the fused kernel defines it: ``x``, ``W`` and ``bias`` rounded to ``dtype``,
    the products summed in float32, one rounding to ``dtype`` at the end. ``nested``: the double-quant arguments."""
    w = decode_weight_reference(packed, absmax, code, shape, blocksize, dtype, **nested).float()
    y = x.to(dtype).float() @ w.t()
    if bias is not None:
        y = y + bias.to(dtype).float()
    return y.to(dtype)


def nf4_matmul_grad_x_reference(
    g: Tensor, packed: Tensor, absmax: Tensor, code: Tensor, shape: tuple[int, int], blocksize: int,
    dtype: torch.dtype, **nested: object,
) -> Tensor:
    """``g dequant(W)`` (the input gradient, notebook 08 eq. 2) with the numerics of :func:`nf4_matmul_reference`."""
    w = decode_weight_reference(packed, absmax, code, shape, blocksize, dtype, **nested).float()
    return (g.to(dtype).float() @ w).to(dtype)


def agreement_bound(a: Tensor, b: Tensor, result: Tensor, dtype: torch.dtype, extra: Tensor | None = None) -> Tensor:
    """How far two float32-accumulated products ``a @ b`` (rounded to ``dtype``) may lie apart, elementwise.

    ``a [M, K]`` and ``b [K, N]`` are the operands *as the kernel sees them* (already rounded to the matmul
    dtype), ``result`` ``[M, N]`` either side's answer, ``extra`` an optional ``[N]`` term added before the
    rounding (a bias). Returns ``2 gamma_K (|a| @ |b| + |extra|) + eps(dtype) max(|result|, tiny(dtype))``
    (module docstring): the float32 summation-order term plus one spacing of ``dtype`` at the result.
    """
    k = a.shape[-1]
    u = fp32_unit_roundoff
    gamma = k * u / (1 - k * u)
    magnitude = a.abs().double() @ b.abs().double()
    if extra is not None:
        magnitude = magnitude + extra.abs().double()
    info = torch.finfo(dtype)
    spacing = info.eps * result.abs().double().clamp_min(info.tiny)
    return 2 * gamma * magnitude + spacing
