"""NF4 dequantize as one Triton kernel, bit for bit equal to :func:`lorakit.nf4.dequantize_nf4` (notebook 15, sec. 2).

The format is bitsandbytes' (notebooks 06-07, :mod:`lorakit.nf4`): the flattened weight is cut into blocks of
``blocksize`` elements; byte ``j`` of ``packed`` holds element ``2j`` in its high nibble and ``2j + 1`` in its low
nibble; block ``b`` has one float32 ``absmax[b]``, or, double-quantized, one uint8 code into the 8-bit dynamic code
with ``absmax[b] = dynamic[codes[b]] * scales[b // nested_blocksize] + offset`` (two roundings: multiply, then add).
Every element is ``W[i] = code[c_i] * absmax[i // blocksize]``, a float32 product rounded once to the output dtype.

The PyTorch path (:mod:`lorakit.nf4.kernels`) makes several passes over memory: bytes to an index, a table gather,
the scale multiply, the cast. This kernel makes one: each program reads ``BLOCK`` packed bytes (and their absmax),
and writes ``2 * BLOCK`` finished values. Bytes moved per weight: 0.5 (code) + 4/blocksize (absmax) read, 2 (bf16)
or 4 (fp32) written, the bound notebook 15 derives.

Functions: :func:`decode_weight` (unchecked and sync-free, the form a layer calls every step, the same arguments
as :func:`lorakit.nf4.kernels.decode_weight` but with the 16 levels ``code`` instead of the pair table);
:func:`dequantize_4bit` and :func:`dequantize_nf4` (checked, for a :class:`~lorakit.nf4.QuantizedTensor`, as their
:mod:`lorakit.nf4` namesakes).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lorakit.kernels._triton import check_device, import_triton, launch_options
from lorakit.nf4 import QuantizedTensor
from lorakit.nf4.codes import NF4_OFFSET, _nf4_code_cached, dynamic_code_on, is_code
from lorakit.nf4.containers import DoubleQuantizedAbsmax
from lorakit.nf4.validation import BLOCKSIZES, check_dtype

triton = import_triton()
import triton.language as tl  # noqa: E402  (after import_triton: it picks compiled or interpreted kernels)

__all__ = [
    "BYTES_PER_PROGRAM", "block_absmax", "decode_weight", "dequantize_4bit", "dequantize_nf4", "nested_arguments",
    "packed_bytes",
]

#: Packed bytes one program decodes (it writes twice as many values).
BYTES_PER_PROGRAM = 1024


@triton.jit
def block_absmax(absmax_ptr, block, mask, nested_scales_ptr, nested_offset_ptr, nested_code_ptr,
                 DOUBLE_QUANT: tl.constexpr, NESTED_BLOCKSIZE: tl.constexpr):
    """The float32 absmax of the blocks ``block`` (0 where ``mask`` is off): stored, or rebuilt from double quant."""
    if DOUBLE_QUANT:
        q = tl.load(absmax_ptr + block, mask=mask, other=0).to(tl.int32)  # the block's 8-bit code
        scale = tl.load(nested_scales_ptr + block // NESTED_BLOCKSIZE, mask=mask, other=0.0)
        absmax = tl.load(nested_code_ptr + q) * scale + tl.load(nested_offset_ptr)  # two roundings (no FMA)
        absmax = tl.where(mask, absmax, 0.0)
    else:
        absmax = tl.load(absmax_ptr + block, mask=mask, other=0.0)
    return absmax


@triton.jit
def _nf4_dequant_kernel(packed_ptr, absmax_ptr, code_ptr, out_ptr, n_bytes, numel,
                        nested_scales_ptr, nested_offset_ptr, nested_code_ptr,
                        BLOCKSIZE: tl.constexpr, DOUBLE_QUANT: tl.constexpr, NESTED_BLOCKSIZE: tl.constexpr,
                        BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)                      # int64: weights beyond 2**31 elements stay addressable
    j = pid * BLOCK + tl.arange(0, BLOCK)                    # the bytes this program decodes
    in_range = j < n_bytes
    byte = tl.load(packed_ptr + j, mask=in_range, other=0).to(tl.int32)
    high = byte >> 4                                         # element 2j: the high nibble
    low = byte & 15                                          # element 2j + 1: the low nibble
    block = (2 * j) // BLOCKSIZE                             # blocksize is even: both nibbles share one block
    absmax = block_absmax(absmax_ptr, block, in_range, nested_scales_ptr, nested_offset_ptr, nested_code_ptr,
                          DOUBLE_QUANT, NESTED_BLOCKSIZE)
    first = tl.load(code_ptr + high) * absmax                # float32 products, as the reference
    second = tl.load(code_ptr + low) * absmax
    values = tl.reshape(tl.join(first, second), (2 * BLOCK,))  # [2 * BLOCK]: element 2j, then 2j + 1
    i = pid * 2 * BLOCK + tl.arange(0, 2 * BLOCK)            # odd numel: the last byte's low nibble is padding
    tl.store(out_ptr + i, values.to(out_ptr.dtype.element_ty), mask=i < numel)  # one rounding to the output dtype


def packed_bytes(packed: Tensor) -> Tensor:
    """The packed codes as flat uint8 (a layer may store them viewed as another dtype, bitsandbytes' quant_storage)."""
    if not isinstance(packed, Tensor):
        raise TypeError(f"packed must be a tensor, got {type(packed).__name__}")
    flat = packed.reshape(-1)
    return flat if flat.dtype == torch.uint8 else flat.view(torch.uint8)


def _as_offset(offset: Tensor | float, device: torch.device) -> Tensor:
    if isinstance(offset, Tensor):
        if offset.numel() != 1 or offset.dtype != torch.float32:
            raise TypeError(f"nested_offset must be a float32 scalar tensor or a float, got {offset.dtype} "
                            f"{tuple(offset.shape)}")
        return offset.reshape(1)
    return torch.tensor([offset], dtype=torch.float32, device=device)


def nested_arguments(absmax: Tensor, nested_absmax: Tensor | None, nested_offset: Tensor | float | None,
                     nested_code: Tensor | None, nested_blocksize: int) -> tuple:
    """``(nested_scales, nested_offset, nested_code, DOUBLE_QUANT, NESTED_BLOCKSIZE)`` for a kernel launch.

    Without double quantization the three pointers are never read; ``absmax`` stands in for them.
    """
    if nested_absmax is None:
        if absmax.dtype != torch.float32:
            raise TypeError(f"absmax must be float32 (or uint8 codes with nested_absmax given), got {absmax.dtype}")
        return absmax, absmax, absmax, False, 256
    if absmax.dtype != torch.uint8:
        raise TypeError(f"absmax must hold the uint8 codes of a double-quantized absmax, got {absmax.dtype}")
    if nested_offset is None:
        raise ValueError("nested_offset must be given with nested_absmax")
    if nested_blocksize not in BLOCKSIZES:
        raise ValueError(f"nested_blocksize must be one of {BLOCKSIZES}, got {nested_blocksize}")
    code = dynamic_code_on(absmax.device) if nested_code is None else nested_code
    return nested_absmax, _as_offset(nested_offset, absmax.device), code, True, nested_blocksize


def decode_weight(
    packed: Tensor, absmax: Tensor, code: Tensor, shape: tuple[int, ...], blocksize: int, dtype: torch.dtype,
    nested_absmax: Tensor | None = None, nested_offset: Tensor | float | None = None,
    nested_code: Tensor | None = None, nested_blocksize: int = 256,
) -> Tensor:
    """The weight of ``shape`` in ``dtype``, decoded by one kernel launch; unchecked values, no host sync.

    ``code``: the 16 float32 levels (``NF4Linear.quant_map``). With ``nested_absmax`` given, ``absmax`` holds the
    uint8 codes of a double-quantized absmax (scales ``nested_absmax``, mean ``nested_offset``, levels
    ``nested_code``, default the 8-bit dynamic code). Only shapes, dtypes and devices are checked here (no
    values: that needs a host sync); :func:`dequantize_4bit` is the checked entry point.
    """
    if blocksize not in BLOCKSIZES:
        raise ValueError(f"blocksize must be one of {BLOCKSIZES}, got {blocksize}")
    check_dtype(dtype, "dtype")
    packed = packed_bytes(packed)
    numel = 1
    for s in shape:
        numel *= int(s)
    if packed.numel() != (numel + 1) // 2:
        raise ValueError(f"packed has {packed.numel()} bytes, shape {tuple(shape)} needs {(numel + 1) // 2}")
    if code.dtype != torch.float32 or code.numel() != 16:
        raise TypeError(f"code must be the 16 float32 levels, got {code.dtype} {tuple(code.shape)}")
    n_blocks = -(-numel // blocksize)
    if absmax.numel() != n_blocks:
        raise ValueError(f"absmax has {absmax.numel()} entries, {numel} elements in blocks of {blocksize} need "
                         f"{n_blocks}")
    for name, t in (("packed", packed), ("absmax", absmax), ("code", code)):
        check_device(name, t)
        if t.device != packed.device:
            raise ValueError(f"{name} is on {t.device}, packed on {packed.device}: all must share one device")
    nested = nested_arguments(absmax, nested_absmax, nested_offset, nested_code, nested_blocksize)
    out = torch.empty(numel, dtype=dtype, device=packed.device)
    n_bytes = packed.numel()
    grid = (triton.cdiv(n_bytes, BYTES_PER_PROGRAM),)
    _nf4_dequant_kernel[grid](packed, absmax, code, out, n_bytes, numel, nested[0], nested[1], nested[2],
                              BLOCKSIZE=blocksize, DOUBLE_QUANT=nested[3], NESTED_BLOCKSIZE=nested[4],
                              BLOCK=BYTES_PER_PROGRAM, **launch_options())
    return out.view(tuple(shape))


def _decode_quantized(q: QuantizedTensor, dtype: torch.dtype | None) -> Tensor:
    dtype = q.dtype if dtype is None else dtype
    if isinstance(q.absmax, DoubleQuantizedAbsmax):
        a = q.absmax
        return decode_weight(q.packed, a.codes, q.code, q.shape, q.blocksize, dtype, a.scales, a.offset,
                             dynamic_code_on(a.device), a.blocksize)
    return decode_weight(q.packed, q.absmax, q.code, q.shape, q.blocksize, dtype)


def dequantize_4bit(q: QuantizedTensor, dtype: torch.dtype | None = None) -> Tensor:
    """:func:`lorakit.nf4.dequantize_4bit` as a Triton kernel: ``q`` checked first, then decoded in one pass.

    Equal to it bit for bit in float32 and float16 (and bfloat16 when compiled for a GPU).
    """
    if not isinstance(q, QuantizedTensor):
        raise TypeError(f"q must be a QuantizedTensor, got {type(q).__name__}")
    check_dtype(dtype, "dtype", allow_none=True)
    q.validate()
    return _decode_quantized(q, dtype)


def dequantize_nf4(q: QuantizedTensor, dtype: torch.dtype | None = None) -> Tensor:
    """:func:`dequantize_4bit` for an NF4 tensor (checks that ``q.code`` is NF4), as
    :func:`lorakit.nf4.dequantize_nf4`; equal to it bit for bit."""
    if not isinstance(q, QuantizedTensor):
        raise TypeError(f"q must be a QuantizedTensor, got {type(q).__name__}")
    check_dtype(dtype, "dtype", allow_none=True)
    q.validate()
    if not is_code(q.code, _nf4_code_cached(NF4_OFFSET)):
        raise ValueError("q.code is not the NF4 code; use dequantize_4bit for other 4-bit codes")
    return _decode_quantized(q, dtype)

