"""Blockwise absmax 4-bit quantization (notebook 07; QLoRA eq. (1)-(2)), bit-exact with bitsandbytes.

Behaviour copied from bitsandbytes 0.50.2 on purpose (found by reading its CPU code; tests pin it):

* scaling: full blocks compute ``x * (1 / absmax)``, the partial last block computes ``x / absmax``
  (the two can differ in the last bit, which can flip a rounding decision);
* ties: a value exactly half-way between two levels goes to the *lower* level
  (``torch.bucketize`` against the fp32 midpoints, ``right=False``);
* an all-zero block stores absmax 0 and code 7 (the level 0.0); an all-zero *partial last* block
  stores absmax 1e-38 (bitsandbytes clamps the divisor there and stores the clamped value);
* an odd element count is padded with one 0.0 before packing, so the spare low nibble holds code 7.
"""

from __future__ import annotations

import torch

from lorakit.nf4.codes import nf4_code
from lorakit.nf4.containers import DoubleQuantizedAbsmax, QuantizedTensor
from lorakit.nf4.double_quant import double_quantize
from lorakit.nf4.validation import check_blocksize, check_code, check_weight

__all__ = ["quantize_4bit", "quantize_nf4"]

#: Divisor floor used by bitsandbytes for all-zero blocks (a float32 subnormal once cast).
_TINY = 1e-38


def _blockwise_scale(flat: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(absmax [n_blocks], x / absmax clamped to [-1, 1]) with bitsandbytes' exact float32 arithmetic."""
    n = flat.numel()
    rem = n % blocksize
    full = n - rem
    body = flat[:full].view(full // blocksize, blocksize)
    absmax = body.abs().amax(dim=1)
    scaled = torch.clamp(body * (1.0 / absmax.clamp(min=_TINY)).unsqueeze(1), -1, 1).reshape(-1)
    if rem:
        tail_absmax = flat[full:].abs().max().clamp(min=_TINY)  # stored clamped, as bitsandbytes does
        absmax = torch.cat([absmax, tail_absmax.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / tail_absmax, -1, 1)])
    return absmax, scaled


def _nearest_level(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the nearest level of ``code`` for each value; ties to the lower level (as bitsandbytes)."""
    order = torch.argsort(code)
    ordered = code[order]
    midpoints = (ordered[:-1] + ordered[1:]) / 2
    position = torch.bucketize(scaled, midpoints, out_int32=True)
    if bool((order == torch.arange(code.numel(), device=code.device)).all()):
        return position
    return order.to(torch.int32)[position]


def quantize_4bit(
    w: torch.Tensor, code: torch.Tensor, blocksize: int = 64, double_quant: bool = False
) -> QuantizedTensor:
    """Blockwise absmax 4-bit quantization of ``w`` to the 16 levels ``code`` (notebook 07; QLoRA eq. (1)-(2)).

    For block ``b``: ``absmax_b = max |w_i|``, code ``c_i = argmin_j |w_i / absmax_b - code[j]|``
    (ties to the lower level), two codes a byte, first in the high nibble. ``code`` need not be sorted
    (``fp4_code()`` is in bit-pattern order). ``double_quant`` stores absmax via :func:`double_quantize`.
    Runs on ``w``'s device; ``w`` must be a non-empty, finite float32/bfloat16/float16 tensor.
    """
    check_weight(w)
    code = check_code(code).to(w.device)
    check_blocksize(blocksize)
    if not isinstance(double_quant, bool):
        raise TypeError(f"double_quant must be a bool, got {type(double_quant).__name__}")
    flat = w.detach().reshape(-1).float()
    absmax, scaled = _blockwise_scale(flat, blocksize)
    if scaled.numel() % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1))  # the spare nibble holds the code of 0.0
    q = _nearest_level(scaled, code).to(torch.uint8)
    packed = (q[0::2] << 4) | q[1::2]
    stored: torch.Tensor | DoubleQuantizedAbsmax = double_quantize(absmax) if double_quant else absmax
    return QuantizedTensor(packed, stored, w.shape, w.dtype, blocksize, code)


def quantize_nf4(w: torch.Tensor, blocksize: int = 64, double_quant: bool = False) -> QuantizedTensor:
    """NF4-quantize ``w`` (QLoRA's storage format); bytes and absmax equal bitsandbytes'
    ``quantize_4bit(w, blocksize, quant_type="nf4", compress_statistics=double_quant)``."""
    return quantize_4bit(w, nf4_code(), blocksize=blocksize, double_quant=double_quant)
