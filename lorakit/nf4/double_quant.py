"""Double quantization: the per-block absmax constants, quantized again to 8 bits (QLoRA section 3; notebook 07).

The fp32 absmax costs 32/64 = 0.5 bit per parameter. QLoRA quantizes those constants again: subtract their
mean, then quantize them in blocks of 256 with an 8-bit code (bitsandbytes' "dynamic" code,
:func:`lorakit.nf4.dynamic_code`), keeping one fp32 scale a block of 256 and the fp32 mean. The overhead
becomes 8/64 + 32/(64*256) = 0.127 bit per parameter (see :func:`lorakit.nf4.bits_per_parameter`).
"""

from __future__ import annotations

import functools

import torch

from lorakit.nf4.codes import _dynamic_code_cached
from lorakit.nf4.containers import DoubleQuantizedAbsmax
from lorakit.nf4.validation import check_blocksize, check_weight

__all__ = ["double_quantize"]

#: Cells of the uniform grid over [-1, 1] that bitsandbytes' CPU 8-bit quantizer rounds to first.
_GRID_CELLS = 65536


@functools.lru_cache(maxsize=8)
def _dynamic_grid_table(device: torch.device) -> torch.Tensor:
    """uint8 [65536]: for grid point ``g`` (value ``g / 32767.5 - 1``), the index of the nearest dynamic level."""
    code = _dynamic_code_cached(True)
    grid = torch.arange(_GRID_CELLS, dtype=torch.float32) / ((_GRID_CELLS - 1) / 2) - 1
    return torch.bucketize(grid, (code[:-1] + code[1:]) / 2).to(torch.uint8).to(device)


def double_quantize(absmax: torch.Tensor, blocksize: int = 256) -> DoubleQuantizedAbsmax:
    """Quantize the per-block absmax with the 8-bit dynamic code (QLoRA's double quantization; notebook 07).

    Subtract the mean (the constants are all positive; centring lets the signed code spend its sign bit
    on them), then blockwise absmax-quantize in blocks of ``blocksize`` to the dynamic code, keeping
    one fp32 scale a block and the fp32 mean. Codes, scales and mean equal bitsandbytes'
    ``quantize_4bit(..., compress_statistics=True)`` state on CPU. ``absmax`` must be a non-empty 1-D
    float32 tensor of finite values >= 0 (absolute maxima cannot be negative).

    Rounding detail copied from bitsandbytes' CPU kernel (found by probing it; tests pin it): the
    normalised value ``x = v / scale`` is first snapped to a uniform grid of 65536 points on [-1, 1]
    (``g = floor((x + 1) * 32767.5 + 0.5)``) and the level nearest to that grid point is stored. So a value
    within half a grid step (1.5e-5) of a midpoint between two levels may take the farther level, and the
    levels of magnitude below 1.5e-5 are never used. Both effects are far below the code's own step
    there, so the reconstruction error stays within one code step of exact nearest rounding. An all-zero
    block (every absmax equal to the mean) stores scale 0 and code 0, and reconstructs to the mean.
    """
    if not isinstance(absmax, torch.Tensor):
        raise TypeError(f"absmax must be a torch.Tensor, got {type(absmax).__name__}")
    if absmax.dtype != torch.float32 or absmax.dim() != 1:
        raise TypeError(f"absmax must be a 1-D float32 tensor, got {absmax.dtype} with {absmax.dim()} dims")
    check_weight(absmax, "absmax")
    check_blocksize(blocksize)
    lowest = absmax.min()
    if bool(lowest < 0):
        raise ValueError(f"absmax must hold values >= 0 (absolute maxima), got a negative value {lowest.item():g}")
    offset = absmax.mean()
    centred = absmax - offset
    n = centred.numel()
    rem = n % blocksize
    full = n - rem
    body = centred[:full].view(full // blocksize, blocksize)
    scales = body.abs().amax(dim=1)
    scaled = (body / scales.unsqueeze(1)).reshape(-1)
    if rem:
        tail_scale = centred[full:].abs().max()
        scales = torch.cat([scales, tail_scale.unsqueeze(0)])
        scaled = torch.cat([scaled, centred[full:] / tail_scale])
    half = (_GRID_CELLS - 1) / 2
    grid = torch.floor((scaled + 1.0) * half + 0.5)
    grid = torch.nan_to_num(grid, nan=0.0).clamp_(0, _GRID_CELLS - 1).long()  # 0/0 (all-zero block) -> code 0
    codes = _dynamic_grid_table(absmax.device)[grid]
    return DoubleQuantizedAbsmax(codes, scales, float(offset), blocksize)
