"""Argument checks shared by the NF4 functions: each raises a TypeError/ValueError that names the argument.

These run where a quantized tensor is *made* or *handed in by a user* (quantize, the checked dequantize,
construction, loading), never in the layer's forward and backward (:mod:`lorakit.nf4.kernels`).
Value checks (finite, non-negative) cost one host sync each, which is why they live here.
"""

from __future__ import annotations

import torch

__all__ = [
    "BLOCKSIZES", "FLOAT_DTYPES", "check_blocksize", "check_code", "check_dtype", "check_nonnegative_finite",
    "check_weight", "n_blocks",
]

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Block sizes accepted (bitsandbytes' quantize_4bit accepts exactly these on every backend).
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


def n_blocks(numel: int, blocksize: int) -> int:
    """``ceil(numel / blocksize)``: the number of absmax constants."""
    return -(-numel // blocksize)


def check_blocksize(blocksize: object, name: str = "blocksize") -> int:
    """``blocksize`` if it is one of :data:`BLOCKSIZES`; TypeError for a non-int, ValueError otherwise."""
    if isinstance(blocksize, bool) or not isinstance(blocksize, int):
        raise TypeError(f"{name} must be an int power of two in [32, 4096], got {type(blocksize).__name__}")
    if blocksize not in BLOCKSIZES:
        raise ValueError(f"{name} must be a power of two in [32, 4096], got {blocksize}")
    return blocksize


def check_dtype(dtype: object, name: str = "dtype", allow_none: bool = False) -> None:
    """TypeError unless ``dtype`` is float32, bfloat16 or float16 (or None when ``allow_none``)."""
    if dtype is None and allow_none:
        return
    if dtype not in FLOAT_DTYPES:
        extra = " or None" if allow_none else ""
        raise TypeError(f"{name} must be float32, bfloat16, float16{extra}, got {dtype!r}")


def check_weight(w: object, name: str = "w") -> torch.Tensor:
    """A non-empty, finite float32/bfloat16/float16 tensor (what can be quantized)."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if w.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {w.dtype}")
    if w.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{name} contains NaN or inf; quantization needs finite values")
    return w


def check_code(code: object, name: str = "code") -> torch.Tensor:
    """16 finite float32 levels."""
    if not isinstance(code, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of 16 float32 levels, got {type(code).__name__}")
    if code.dtype != torch.float32 or code.shape != (16,):
        raise ValueError(f"{name} must be a float32 tensor of shape (16,), got {code.dtype} {tuple(code.shape)}")
    if not bool(torch.isfinite(code).all()):
        raise ValueError(f"{name} must hold finite levels")
    return code


def check_nonnegative_finite(t: torch.Tensor, name: str) -> None:
    """ValueError naming ``name`` unless every value of the float tensor ``t`` is finite and >= 0 (one sync).

    ``aminmax`` propagates NaN, so a single reduction catches NaN, +-inf and negative values.
    """
    if t.numel() == 0:
        return
    low, high = torch.stack(torch.aminmax(t.detach().float())).tolist()
    if not (low >= 0 and high < float("inf")):  # False for NaN too
        if low != low or high != high:
            problem = "NaN"
        elif high == float("inf") or low == float("-inf"):
            problem = "inf"
        else:
            problem = f"a negative value ({low:g})"
        raise ValueError(f"{name} must hold finite values >= 0 (one scale per block), but it contains {problem}")
