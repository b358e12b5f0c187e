"""The interview article's "NF4" quantizer, written once, so notebooks 06 and 08 run the same wrong code.

A widely read interview write-up on LoRA and QLoRA gives a ``QLoRALinear`` whose ``quantize_weight``
claims to be "NF4 4-bit quantisation (block size 64)". Restated here in the course's own code, with its
choices kept, it makes four mistakes, each of which a notebook measures:

1. **The table is not NF4.** It lists NF4's 7 negative levels (to 4 decimals), 0, then the *mirror image*
   of the negative levels (0.0911, 0.1848, ... where NF4 has 0.0796, 0.1609, ...), and ``+inf`` as its 16th
   entry: 15 finite symmetric levels, not NF4's 7 negative, 0 and 8 positive (:data:`INTERVIEW_TABLE`).
2. **The scale is INT4's.** Each block is divided by ``absmax / 7``, so the normalised values reach ±7,
   far outside the table's [-1, 1] (``divisor=7``; NF4 divides by the absmax itself, ``divisor=1``).
3. **searchsorted is not rounding.** ``torch.searchsorted(table, x)`` returns the insertion index, the
   first level ``>= x``: always the level above, never the nearest one (``nearest=False``); every value
   above 1 lands on ``+inf``.
4. **Storage and layout.** The indices stay int64 (8 bytes per weight, not half a byte), and the weight is
   rebuilt with ``view(in_features, out_features)``, a reshape, which is not the transpose of an
   ``nn.Linear`` weight ``[out, in]`` (:func:`interview_dequantize`).

``divisor`` and ``nearest`` fix one mistake at a time, so a notebook can show what each costs. Nothing in
lorakit itself calls this module; :mod:`lorakit.nf4` is the real NF4.
"""

from __future__ import annotations

import torch

__all__ = ["INTERVIEW_TABLE", "interview_dequantize", "interview_quantize", "interview_roundtrip"]

_NEGATIVE = (-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911)
#: The article's 16-entry table: NF4's negative levels, 0, their mirror images, and +inf (ascending).
INTERVIEW_TABLE = torch.tensor([*_NEGATIVE, 0.0, *(-v for v in reversed(_NEGATIVE)), float("inf")])


def _check_args(w: object, divisor: object, nearest: object) -> None:
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise TypeError(f"weight must be a floating-point torch.Tensor, got {type(w).__name__}")
    if w.numel() == 0 or w.numel() % 64:
        raise ValueError(f"weight must have a positive multiple of 64 elements (blocks of 64), got {w.numel()}")
    if isinstance(divisor, bool) or not isinstance(divisor, (int, float)) or not divisor > 0:
        raise ValueError(f"divisor must be a positive number, got {divisor!r}")
    if not isinstance(nearest, bool):
        raise TypeError(f"nearest must be a bool, got {type(nearest).__name__}")


def interview_quantize(weight: torch.Tensor, divisor: float = 7.0, nearest: bool = False):
    """The article's ``quantize_weight``: blocks of 64, ``scale = absmax / divisor``, then ``searchsorted``.

    Returns ``(indices, scales)``: int64 indices into :data:`INTERVIEW_TABLE` (one per weight, flattened) and
    one scale per block. ``divisor=7, nearest=False`` is the article as written; ``divisor=1`` fixes the
    scale; ``nearest=True`` rounds to the nearest of the 15 finite levels instead of the insertion index.
    """
    _check_args(weight, divisor, nearest)
    table = INTERVIEW_TABLE.to(weight.device)
    blocks = weight.detach().float().reshape(-1, 64)
    scales = blocks.abs().amax(dim=1, keepdim=True) / divisor  # the article: absmax / 7, "4-bit range [-7, 7]"
    normalised = blocks / scales
    if nearest:
        indices = (normalised.unsqueeze(-1) - table[:15]).abs().argmin(dim=-1)
    else:
        indices = torch.searchsorted(table, normalised.contiguous()).clamp(0, 15)  # insertion index, not nearest
    return indices.reshape(-1), scales.reshape(-1)


def interview_dequantize(indices: torch.Tensor, scales: torch.Tensor, in_features: int, out_features: int):
    """The article's ``dequantize_weight``: ``table[index] * scale`` per block, then ``view(in, out)``.

    For an ``nn.Linear`` weight ``[out, in]`` the final ``view`` is a reshape, not a transpose: the rows
    come back scrambled unless the layer is square and the caller transposes again.
    """
    if not isinstance(indices, torch.Tensor) or indices.dtype != torch.int64:
        raise TypeError("indices must be the int64 tensor interview_quantize returns")
    if not isinstance(scales, torch.Tensor) or scales.numel() * 64 != indices.numel():
        raise ValueError("scales must hold one value per block of 64 indices")
    if in_features * out_features != indices.numel():
        raise ValueError(f"in_features * out_features must equal {indices.numel()}, got {in_features} * {out_features}")
    table = INTERVIEW_TABLE.to(indices.device)
    values = table[indices].reshape(-1, 64) * scales.reshape(-1, 1)
    return values.reshape(-1).view(in_features, out_features)


def interview_roundtrip(weight: torch.Tensor, divisor: float = 7.0, nearest: bool = False) -> torch.Tensor:
    """Quantize then dequantize ``weight`` the article's way, returned in ``weight``'s own shape (no reshape
    mistake), so that its error can be compared with real NF4's element by element."""
    indices, scales = interview_quantize(weight, divisor=divisor, nearest=nearest)
    return interview_dequantize(indices, scales, weight.numel(), 1).reshape(weight.shape)
