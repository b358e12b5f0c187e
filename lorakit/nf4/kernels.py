"""The decode arithmetic of the hot path, unchecked and sync-free (notebook 07, eq. 1; notebook 08).

Every QLoRA forward and backward rebuilds the frozen weight ``W[i] = code[c_i] * absmax[i // blocksize]``.
These functions do only that: no validation (it happened once, when the quantized tensor was made or
loaded: :mod:`lorakit.nf4.validation`), no ``.item()``/``.tolist()``/``bool(tensor)`` (so no host sync on a
GPU and no graph break under ``torch.compile(fullgraph=True)``), no float64 arithmetic (and off the CPU no
float64 tensor at all), and one output tensor in the requested dtype. The public, checked entry points are
:func:`lorakit.nf4.dequantize_4bit` and :func:`lorakit.nf4.dequantize_nf4`.

How the decode works. A 256-entry table maps each packed byte to the *two* float32 values of its nibbles,
stored side by side as one 8-byte integer (:func:`pair_table`), so one ``index_select`` decodes two
elements. Bytes are decoded in chunks: on the CPU small enough that the scratch stays in cache (then the
only large allocation is the output), elsewhere larger (few kernel launches) but bounded, so no
full-size int32 index or float32 scratch is ever allocated. A float32 result is decoded straight into the
output; for bf16/fp16 the chunk is decoded and scaled in float32 (bitsandbytes' arithmetic: the fp32
product is rounded once) and then cast into the output.

The 8-byte pairs are gathered as ``int64`` on every device except the CPU. On the CPU they are gathered as
``float64`` *bit patterns*: PyTorch's CPU ``index_select`` vectorises 8-byte float gathers but not integer
ones (measured 10-15% faster on the gather, about 5% on the whole decode of a 4096 x 4096 weight). Nothing is
computed in float64: the gathered bits are read back as float32 pairs, in a chunk-sized scratch.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["decode", "decode_weight", "dequantize_absmax", "pair_table", "scale_blocks"]

#: Bytes decoded per step on CPU: small enough that the scratch buffers stay in cache.
CPU_CHUNK_BYTES = 1 << 18
#: Bytes decoded per step on other devices: 8M weights, a bounded 48 MiB of scratch at most.
DEVICE_CHUNK_BYTES = 1 << 22
#: The 8-byte container the pairs are gathered in (see the module docstring): bit patterns, never arithmetic.
CPU_PAIR_DTYPE = torch.float64
DEVICE_PAIR_DTYPE = torch.int64


def pair_table(code: Tensor) -> Tensor:
    """int64 [256] whose entry ``b`` holds, bit for bit, the two float32 values (code[b >> 4], code[b & 15]).

    Viewing a pair of float32 as one 8-byte integer lets one 1-D gather decode two elements. (Computed with
    tensor operations on ``code``'s device: no host sync.)
    """
    pairs = torch.stack([code.repeat_interleave(16), code.repeat(16)], dim=1).contiguous()
    return pairs.view(torch.int64).view(256)


def scale_blocks(values: Tensor, absmax: Tensor, blocksize: int) -> Tensor:
    """``values[i] *= absmax[i // blocksize]`` in float32, in place; ``values`` starts at a block boundary."""
    n = values.numel()
    rem = n % blocksize
    full = n - rem
    if full:
        values[:full].view(-1, blocksize).mul_(absmax[: full // blocksize].unsqueeze(1))
    if rem:
        values[full:].mul_(absmax[full // blocksize])
    return values


def dequantize_absmax(codes: Tensor, scales: Tensor, offset: Tensor | float, blocksize: int, code: Tensor) -> Tensor:
    """Double-quantized absmax back to float32: ``code[codes] * scales[block // blocksize] + offset``."""
    values = torch.index_select(code, 0, codes.to(torch.int32))
    return scale_blocks(values, scales, blocksize).add_(offset)


def decode(
    packed: Tensor, absmax: Tensor, table: Tensor, numel: int, blocksize: int, dtype: torch.dtype,
    chunk_bytes: int | None = None,
) -> Tensor:
    """The flat ``[numel]`` weight in ``dtype`` from uint8 ``packed``, float32 ``absmax`` and :func:`pair_table`.

    ``chunk_bytes`` (default: :data:`CPU_CHUNK_BYTES` on CPU, :data:`DEVICE_CHUNK_BYTES` elsewhere) must be a
    multiple of ``blocksize / 2`` so that every chunk starts a block.
    """
    n_bytes = packed.numel()
    on_cpu = packed.device.type == "cpu"
    if chunk_bytes is None:
        chunk_bytes = CPU_CHUNK_BYTES if on_cpu else DEVICE_CHUNK_BYTES
    pair_dtype = CPU_PAIR_DTYPE if on_cpu else DEVICE_PAIR_DTYPE
    table = table.view(pair_dtype)
    chunk = min(chunk_bytes, n_bytes)
    out = torch.empty(2 * n_bytes, dtype=dtype, device=packed.device)
    index = torch.empty(chunk, dtype=torch.int32, device=packed.device)
    direct = dtype == torch.float32  # decode straight into the output: no scratch at all
    scratch = None if direct else torch.empty(chunk, dtype=pair_dtype, device=packed.device)
    for start in range(0, n_bytes, chunk):
        stop = min(start + chunk, n_bytes)
        k = stop - start
        index[:k].copy_(packed[start:stop])
        target = out[2 * start : 2 * stop]
        pairs = target.view(pair_dtype) if direct else scratch[:k]
        torch.index_select(table, 0, index[:k], out=pairs)
        values = scale_blocks(pairs.view(torch.float32), absmax[2 * start // blocksize :], blocksize)
        if not direct:
            target.copy_(values)  # a separate cast: much faster on CPU than a multiply that casts
    return out[:numel]


def decode_weight(
    packed: Tensor, absmax: Tensor, table: Tensor, shape: tuple[int, ...], blocksize: int, dtype: torch.dtype,
    nested_absmax: Tensor | None = None, nested_offset: Tensor | float | None = None,
    nested_code: Tensor | None = None, nested_blocksize: int = 256,
) -> Tensor:
    """The weight of ``shape`` in ``dtype``; with ``nested_absmax`` given, ``absmax`` holds the 8-bit codes of a
    double-quantized absmax (scales ``nested_absmax``, mean ``nested_offset``, levels ``nested_code``)."""
    if nested_absmax is not None:
        absmax = dequantize_absmax(absmax, nested_absmax, nested_offset, nested_blocksize, nested_code)
    numel = 1
    for s in shape:
        numel *= s
    return decode(packed.reshape(-1).view(torch.uint8), absmax, table, numel, blocksize, dtype).view(shape)
