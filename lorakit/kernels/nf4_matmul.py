"""The fused 4-bit matmul ``y = x dequant(W)^T (+ b)`` and its backward ``dL/dx = g dequant(W)`` (notebook 15, sec. 3).

``lorakit.qlora`` computes QLoRA's base product (notebook 08, eqs. 1-2) in two steps: dequantize the whole
``[N, K]`` weight into the compute dtype (written to memory: 2 bytes a weight in bf16), then ``torch.matmul``
(which reads those 2 bytes again). At decode batch sizes the product does almost no arithmetic per weight, so
its time is the bytes it moves: 0.5 + 4/blocksize + 2 + 2 = ~4.6 bytes a weight for the two steps. These kernels
read the packed codes tile by tile, decode each ``[BN, BK]`` tile *in registers* (:func:`weight_tile`: the same
arithmetic as :mod:`lorakit.kernels.nf4_dequant`) and feed it straight to ``tl.dot``; the full-precision weight is
never written anywhere, and the traffic is ~0.56 bytes a weight, a bound about 8x lower.

Numerics (what :func:`lorakit.kernels.reference.nf4_matmul_reference` defines and the tests check): the weight tile
is decoded bit for bit as :func:`lorakit.nf4.dequantize_4bit` would, rounded to the compute dtype; ``x`` is rounded
to the compute dtype; products are accumulated in float32 (``tl.dot``, IEEE float32 when the compute dtype is fp32,
never TF32); the bias is rounded to the compute dtype and added in float32; the result is rounded once. Only the
float32 summation order differs from the reference.

Public: :func:`nf4_matmul`, :func:`nf4_matmul_grad_x` (unchecked values, sync-free) and :func:`nf4_linear`, the
autograd function ``QLoRALinear(backend="triton")`` runs: the same arguments as :func:`lorakit.qlora.nf4_linear`
except that it takes the 16 levels ``code`` where that one takes the pair table.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from lorakit.kernels._triton import check_device, import_triton, interpreting, launch_options
from lorakit.kernels.nf4_dequant import block_absmax, nested_arguments, packed_bytes
from lorakit.nf4.validation import BLOCKSIZES, FLOAT_DTYPES
from lorakit.qlora.matmul import matmul_dtype

triton = import_triton()
import triton.language as tl  # noqa: E402  (after import_triton: it picks compiled or interpreted kernels)

__all__ = ["nf4_linear", "nf4_matmul", "nf4_matmul_grad_x", "weight_tile"]


@triton.jit
def weight_tile(packed_ptr, absmax_ptr, code_ptr, nested_scales_ptr, nested_offset_ptr, nested_code_ptr,
                rows, k0, cols, N, K, BLOCKSIZE: tl.constexpr, DOUBLE_QUANT: tl.constexpr,
                NESTED_BLOCKSIZE: tl.constexpr, ALIGNED: tl.constexpr, BK: tl.constexpr):
    """``W[rows, cols]`` of the ``[N, K]`` 4-bit weight decoded in registers: float32, zero outside the weight.

    ``cols = k0 + arange(BK)``, ``k0`` a multiple of ``BK``. Fast path, ``ALIGNED`` (``K % BLOCKSIZE == 0``, the
    usual layer) with ``BK <= BLOCKSIZE``: every row starts on a byte and on a block, and a tile's row lies inside
    one block, so addresses split into a per-row and a per-column part and each row needs one absmax. Otherwise
    (any shape) the flat index ``i = row K + col`` gives each element its byte, nibble and block.
    """
    inside = (rows[:, None] < N) & (cols[None, :] < K)
    if ALIGNED and BK <= BLOCKSIZE:
        row = rows.to(tl.int64)
        byte = tl.load(packed_ptr + (row * (K // 2))[:, None] + (cols // 2)[None, :], mask=inside, other=0)
        nibble = (byte.to(tl.int32) >> (4 - 4 * (cols % 2))[None, :]) & 15   # even column: the high nibble
        absmax = block_absmax(absmax_ptr, row * (K // BLOCKSIZE) + k0 // BLOCKSIZE, rows < N, nested_scales_ptr,
                              nested_offset_ptr, nested_code_ptr, DOUBLE_QUANT, NESTED_BLOCKSIZE)[:, None]
    else:
        i = rows[:, None].to(tl.int64) * K + cols[None, :]                  # flat (row-major) element index
        byte = tl.load(packed_ptr + i // 2, mask=inside, other=0).to(tl.int32)
        nibble = (byte >> (4 - 4 * (i % 2)).to(tl.int32)) & 15
        absmax = block_absmax(absmax_ptr, i // BLOCKSIZE, inside, nested_scales_ptr, nested_offset_ptr,
                              nested_code_ptr, DOUBLE_QUANT, NESTED_BLOCKSIZE)
    return tl.load(code_ptr + nibble) * absmax                              # the float32 product of the reference


@triton.jit
def _nf4_matmul_kernel(x_ptr, packed_ptr, absmax_ptr, code_ptr, nested_scales_ptr, nested_offset_ptr,
                       nested_code_ptr, bias_ptr, y_ptr, M, N, K, stride_xm, stride_xk,
                       BLOCKSIZE: tl.constexpr, DOUBLE_QUANT: tl.constexpr, NESTED_BLOCKSIZE: tl.constexpr,
                       ALIGNED: tl.constexpr, HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                       BK: tl.constexpr):
    """``y[BM rows, BN columns] = x[rows, :] @ dequant(W)[columns, :]^T (+ bias)``, K in steps of BK."""
    dtype = y_ptr.dtype.element_ty                                 # the compute dtype
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    acc = tl.full((BM, BN), 0.0, tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :] * stride_xk,
                    mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0).to(dtype)
        w = weight_tile(packed_ptr, absmax_ptr, code_ptr, nested_scales_ptr, nested_offset_ptr, nested_code_ptr,
                        rn, k0, rk, N, K, BLOCKSIZE, DOUBLE_QUANT, NESTED_BLOCKSIZE, ALIGNED, BK).to(dtype)
        acc = tl.dot(x, tl.trans(w), acc, input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(dtype).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(dtype), mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _nf4_grad_x_kernel(g_ptr, packed_ptr, absmax_ptr, code_ptr, nested_scales_ptr, nested_offset_ptr,
                       nested_code_ptr, gx_ptr, M, N, K, stride_gm, stride_gn,
                       BLOCKSIZE: tl.constexpr, DOUBLE_QUANT: tl.constexpr, NESTED_BLOCKSIZE: tl.constexpr,
                       ALIGNED: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """``gx[BM rows, BK columns] = g[rows, :] @ dequant(W)[:, columns]``, N in steps of BN (eq. 2 of notebook 08)."""
    dtype = gx_ptr.dtype.element_ty
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rk = tl.program_id(1) * BK + tl.arange(0, BK)
    acc = tl.full((BM, BK), 0.0, tl.float32)
    for n0 in range(0, N, BN):
        rn = n0 + tl.arange(0, BN)
        g = tl.load(g_ptr + rm[:, None] * stride_gm + rn[None, :] * stride_gn,
                    mask=(rm[:, None] < M) & (rn[None, :] < N), other=0.0).to(dtype)
        w = weight_tile(packed_ptr, absmax_ptr, code_ptr, nested_scales_ptr, nested_offset_ptr, nested_code_ptr,
                        rn, tl.program_id(1) * BK, rk, N, K, BLOCKSIZE, DOUBLE_QUANT, NESTED_BLOCKSIZE, ALIGNED,
                        BK).to(dtype)  # [BN, BK]
        acc = tl.dot(g, w, acc, input_precision="ieee")
    tl.store(gx_ptr + rm[:, None] * K + rk[None, :], acc.to(dtype), mask=(rm[:, None] < M) & (rk[None, :] < K))


# ------------------------------------------------------------------------------------------ tile sizes
def _row_block(m: int) -> int:
    """Rows a program covers: 16 (tl.dot's minimum) for decode batches, more for prefill and training."""
    return 16 if m <= 16 else 32 if m <= 32 else 64


def _gpu_configs(small: bool, max_bk: int) -> list:
    """Candidate (BN, BK) tiles for the autotuner on a GPU (BM is fixed by the batch size, :func:`_row_block`).

    ``max_bk``: the blocksize on an aligned weight, so every candidate takes :func:`weight_tile`'s fast path.
    """
    tiles = [(32, 64), (64, 64), (128, 64), (32, 32), (64, 32)] if small else [(64, 64), (128, 64), (64, 32),
                                                                              (128, 32)]
    fitting = [(bn, bk) for bn, bk in tiles if bk <= max_bk] or [(bn, 32) for bn in (32, 64, 128)]
    return [triton.Config({"BN": bn, "BK": bk}, num_warps=4, num_stages=stages)
            for bn, bk in fitting for stages in (2, 4)]


_tuned: dict[tuple[str, bool, int], object] = {}
#: Tile sizes under the interpreter (its cost is per program and per operation, not per element: few, wide tiles).
INTERPRETER_TILES = {"BN": 32, "BK": 64}


def _kernel(kind: str, m: int, aligned_blocksize: int | None):
    """The launchable kernel and the tile sizes to pass: fixed tiles in the interpreter, autotuned on a GPU."""
    base = _nf4_matmul_kernel if kind == "forward" else _nf4_grad_x_kernel
    if interpreting():
        return base, dict(INTERPRETER_TILES)
    key = (kind, m <= 16, aligned_blocksize or 4096)
    if key not in _tuned:
        _tuned[key] = triton.autotune(configs=_gpu_configs(m <= 16, key[2]), key=["N", "K", "BM"])(base)
    return _tuned[key], {}


# ------------------------------------------------------------------------------------------ launches
def _check_state(packed: Tensor, absmax: Tensor, code: Tensor, shape: tuple[int, int], blocksize: int,
                 dtype: torch.dtype) -> tuple[Tensor, int, int]:
    if blocksize not in BLOCKSIZES:
        raise ValueError(f"blocksize must be one of {BLOCKSIZES}, got {blocksize}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    if len(shape) != 2:
        raise ValueError(f"shape must be the 2-D weight shape (out_features, in_features), got {tuple(shape)}")
    n, k = int(shape[0]), int(shape[1])
    packed = packed_bytes(packed)
    if packed.numel() != (n * k + 1) // 2:
        raise ValueError(f"packed has {packed.numel()} bytes, a [{n}, {k}] weight needs {(n * k + 1) // 2}")
    if code.dtype != torch.float32 or code.numel() != 16:
        raise TypeError(f"code must be the 16 float32 levels, got {code.dtype} {tuple(code.shape)}")
    if absmax.numel() != -(-n * k // blocksize):
        raise ValueError(f"absmax has {absmax.numel()} entries, a [{n}, {k}] weight in blocks of {blocksize} needs "
                         f"{-(-n * k // blocksize)}")
    for name, t in (("packed", packed), ("absmax", absmax), ("code", code)):
        check_device(name, t)
    return packed, n, k


def _rows(name: str, t: Tensor, width: int) -> Tensor:
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    if t.dim() == 0 or t.shape[-1] != width:
        raise ValueError(f"{name} must have {width} features in its last dim, got shape {tuple(t.shape)}")
    check_device(name, t)
    return t.reshape(-1, width)


def nf4_matmul(
    x: Tensor, packed: Tensor, absmax: Tensor, code: Tensor, shape: tuple[int, int], blocksize: int,
    dtype: torch.dtype, bias: Tensor | None = None, nested_absmax: Tensor | None = None,
    nested_offset: Tensor | float | None = None, nested_code: Tensor | None = None, nested_blocksize: int = 256,
) -> Tensor:
    """``x dequant(W)^T + bias`` in ``dtype`` for the ``[N, K] = shape`` 4-bit weight; ``x [..., K]`` -> ``[..., N]``.

    The 4-bit state is given as :func:`lorakit.kernels.nf4_dequant.decode_weight` takes it. One kernel launch;
    the full-precision weight is never materialised. Values are not checked (no host sync).
    """
    packed, n, k = _check_state(packed, absmax, code, shape, blocksize, dtype)
    x2 = _rows("x", x, k)
    if bias is not None and (not isinstance(bias, Tensor) or bias.shape != (n,)):
        raise ValueError(f"bias must be a tensor of shape ({n},), got {getattr(bias, 'shape', type(bias).__name__)}")
    nested = nested_arguments(absmax, nested_absmax, nested_offset, nested_code, nested_blocksize)
    m = x2.shape[0]
    y = torch.empty(m, n, dtype=dtype, device=x.device)
    if m:
        bm = _row_block(m)
        kernel, tiles = _kernel("forward", m, blocksize if k % blocksize == 0 else None)
        grid = lambda meta: (triton.cdiv(m, bm), triton.cdiv(n, meta["BN"]))  # noqa: E731
        kernel[grid](x2, packed, absmax, code, nested[0], nested[1], nested[2], y if bias is None else bias, y,
                     m, n, k, x2.stride(0), x2.stride(1), BLOCKSIZE=blocksize, DOUBLE_QUANT=nested[3],
                     NESTED_BLOCKSIZE=nested[4], ALIGNED=k % blocksize == 0, HAS_BIAS=bias is not None, BM=bm,
                     **tiles, **launch_options())
    return y.view(*x.shape[:-1], n)


def nf4_matmul_grad_x(
    g: Tensor, packed: Tensor, absmax: Tensor, code: Tensor, shape: tuple[int, int], blocksize: int,
    dtype: torch.dtype, nested_absmax: Tensor | None = None, nested_offset: Tensor | float | None = None,
    nested_code: Tensor | None = None, nested_blocksize: int = 256,
) -> Tensor:
    """``g dequant(W)`` in ``dtype``: ``g [..., N]`` -> ``[..., K]``, the input gradient of :func:`nf4_matmul`."""
    packed, n, k = _check_state(packed, absmax, code, shape, blocksize, dtype)
    g2 = _rows("g", g, n)
    nested = nested_arguments(absmax, nested_absmax, nested_offset, nested_code, nested_blocksize)
    m = g2.shape[0]
    gx = torch.empty(m, k, dtype=dtype, device=g.device)
    if m:
        bm = _row_block(m)
        kernel, tiles = _kernel("grad_x", m, blocksize if k % blocksize == 0 else None)
        grid = lambda meta: (triton.cdiv(m, bm), triton.cdiv(k, meta["BK"]))  # noqa: E731
        kernel[grid](g2, packed, absmax, code, nested[0], nested[1], nested[2], gx, m, n, k, g2.stride(0),
                     g2.stride(1), BLOCKSIZE=blocksize, DOUBLE_QUANT=nested[3], NESTED_BLOCKSIZE=nested[4],
                     ALIGNED=k % blocksize == 0, BM=bm,
                     **tiles, **launch_options())
    return gx.view(*g.shape[:-1], k)


# ------------------------------------------------------------------------------------------ autograd
def _no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


class _FusedNF4MatmulFunction(torch.autograd.Function):
    """``y = x W^T + b``, ``W`` decoded tile by tile in the forward and again in the backward (never stored)."""

    @staticmethod
    def forward(ctx, x, bias, packed, absmax, code, nested_absmax, nested_offset, nested_code,  # type: ignore[override]
                shape, blocksize, nested_blocksize, compute_dtype):
        dtype = matmul_dtype(x, compute_dtype)
        state = (packed, absmax, code, tuple(shape), blocksize)
        nested = (nested_absmax, nested_offset, nested_code, nested_blocksize)
        with _no_autocast(x.device.type):
            out = nf4_matmul(x, *state, dtype, None if bias is None else bias.detach(), *nested)
        ctx.state, ctx.nested, ctx.dtypes = state, nested, (dtype, x.dtype)  # module state, not activations
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        dtype, x_dtype = ctx.dtypes
        grad_x = grad_b = None
        with _no_autocast(g.device.type):
            if ctx.needs_input_grad[0]:
                grad_x = nf4_matmul_grad_x(g, *ctx.state, dtype, *ctx.nested).to(x_dtype)
            if ctx.bias_dtype is not None and ctx.needs_input_grad[1]:
                grad_b = g.reshape(-1, g.shape[-1]).sum(0, dtype=torch.float32).to(ctx.bias_dtype)
        return grad_x, grad_b, None, None, None, None, None, None, None, None, None, None


def nf4_linear(
    x: Tensor, packed: Tensor, bias: Tensor | None, absmax: Tensor, code: Tensor, shape: tuple[int, int],
    blocksize: int, compute_dtype: torch.dtype, nested_absmax: Tensor | None = None,
    nested_offset: Tensor | None = None, nested_code: Tensor | None = None, nested_blocksize: int = 256,
) -> Tensor:
    """:func:`lorakit.qlora.nf4_linear` with the fused kernels: ``x W^T + b`` in the matmul dtype (autocast's, or
    ``compute_dtype``), ``dL/dx`` by :func:`nf4_matmul_grad_x`; ``code`` is the 16 levels (``NF4Linear.quant_map``)."""
    return _FusedNF4MatmulFunction.apply(x, bias, packed, absmax, code, nested_absmax, nested_offset, nested_code,
                                         tuple(shape), blocksize, nested_blocksize, compute_dtype)
