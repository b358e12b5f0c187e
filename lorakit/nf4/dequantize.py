"""The checked dequantize functions users call (notebooks 06-08), and the unpacking of the 4-bit codes.

``dequantize_4bit(q)`` rebuilds ``code[c_i] * absmax_b`` (float32 products, then one cast). It checks
``q`` first, every time: a :class:`~lorakit.nf4.QuantizedTensor` can be mutated after it was made, and a
NaN or negative absmax must be an error, not a silently wrong weight. Layers do not pay for that check
on every step: they validate once, when the quantized weight is made or loaded, and then call the
unchecked, sync-free :func:`lorakit.nf4.kernels.decode_weight`.
"""

from __future__ import annotations

import functools

import torch

from lorakit.nf4 import kernels
from lorakit.nf4.codes import NF4_OFFSET, _nf4_code_cached, is_code
from lorakit.nf4.containers import QuantizedTensor
from lorakit.nf4.validation import check_dtype

__all__ = ["dequantize_4bit", "dequantize_nf4", "unpack_codes"]


@functools.lru_cache(maxsize=64)
def _pair_table_cached(code_bits: tuple[int, ...], device: torch.device) -> torch.Tensor:
    # keyed by the code's bit patterns, so +0.0 and -0.0 levels stay distinct
    return kernels.pair_table(torch.tensor(code_bits, dtype=torch.int32).view(torch.float32).to(device))


def _check_quantized(q: object) -> QuantizedTensor:
    if not isinstance(q, QuantizedTensor):
        raise TypeError(f"q must be a QuantizedTensor, got {type(q).__name__}")
    return q


def _decode_checked(q: QuantizedTensor, dtype: torch.dtype | None) -> torch.Tensor:
    table = _pair_table_cached(tuple(q.code.view(torch.int32).tolist()), q.device)
    out = kernels.decode(q.packed, q.absmax_fp32(), table, q.numel, q.blocksize, q.dtype if dtype is None else dtype)
    return out.view(q.shape)


def dequantize_4bit(q: QuantizedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Reconstruct ``code[c_i] * absmax_b`` (float32 products, then cast) with ``q``'s shape, on ``q.device``.

    The result has ``q.dtype`` unless ``dtype`` is given. ``q`` is checked first (shapes, dtypes, devices,
    finite levels, absmax finite and >= 0): ValueError/TypeError naming the field otherwise. The decode
    itself is :func:`lorakit.nf4.kernels.decode` (a 256-entry table maps each byte to its two values).
    """
    _check_quantized(q)
    check_dtype(dtype, "dtype", allow_none=True)
    q.validate()  # a QuantizedTensor's tensors can be replaced or mutated in place after construction
    return _decode_checked(q, dtype)


def dequantize_nf4(q: QuantizedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """:func:`dequantize_4bit` for a tensor made by :func:`~lorakit.nf4.quantize_nf4` (checks that ``q.code``
    is NF4); equals bitsandbytes' ``dequantize_4bit`` of the same bytes."""
    _check_quantized(q)
    check_dtype(dtype, "dtype", allow_none=True)
    q.validate()
    if not is_code(q.code, _nf4_code_cached(NF4_OFFSET)):
        raise ValueError("q.code is not the NF4 code; use dequantize_4bit for other 4-bit codes")
    return _decode_checked(q, dtype)


def unpack_codes(q: QuantizedTensor) -> torch.Tensor:
    """The 4-bit code of every element, int64 ``[numel]`` in storage order (notebook 06, section 5).

    Byte ``j`` holds element ``2j`` in its high nibble and element ``2j + 1`` in its low nibble
    (``byte = (c0 << 4) | c1``); the spare low nibble of an odd count is dropped.
    """
    _check_quantized(q)
    return torch.stack([q.packed >> 4, q.packed & 15], dim=1).reshape(-1)[: q.numel].long()
