"""Batched multi-adapter LoRA in Triton: BGMV (one adapter per row) and SGMV (segments) (notebook 15, sec. 4).

The operations and their tensor contract are :mod:`lorakit.serving.kernels`' (notebook 12, eq. 2): for row ``t``
with adapter slot ``a(t)`` (``-1``: none), **shrink** ``v_t = x_t A_{a(t)}^T`` (``[T, r]``) and **expand**
``y_t = v_t B'_{a(t)}^T`` (``[T, d_out]``, ``B' = s B``). The PyTorch backend there gathers each row's ``A`` and
``B`` into a ``[T, r, d]`` copy before one ``bmm`` (gather + bmm): ``T r (d_in + d_out)`` numbers written and read
again. These kernels read each row's slot index and load its adapter straight from the stacked bank, so nothing
is gathered (Punica's BGMV, Chen et al. 2023):

* :func:`bgmv_shrink` / :func:`bgmv_expand`: one program per (row, tile of outputs); a row's ``x_t`` meets its
  adapter's ``A`` in a multiply and a sum (a matrix-vector product, no ``tl.dot``: one row has nothing to tile);
* :func:`sgmv_shrink` / :func:`sgmv_expand`: one program per (segment, tile of its rows, tile of outputs), a
  ``tl.dot`` of the segment's rows with its adapter: matrix-matrix products for prefill, where a segment holds a
  whole prompt. The segment bounds are read on the device (``Segments.offsets``, ``Segments.slot_index``); the
  host only needs the longest segment, to size the grid (the host copy of the bounds has it: no sync).

Numerics, as the PyTorch backend computes them: inputs are rounded to the matmul dtype (autocast's, else the
promoted input dtype; expand rounds ``v`` to ``B``'s dtype), products accumulated in float32, one rounding at the
end; rows with slot ``-1`` get zeros. The tests compare with the PyTorch backend and with the float64
``reference_delta``. :func:`register_serving_backend` makes them ``lorakit.serving``'s ``backend="triton"``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lorakit.kernels._triton import check_device, import_triton, interpreting, launch_options
from lorakit.serving.kernels import Segments

triton = import_triton()
import triton.language as tl  # noqa: E402  (after import_triton: it picks compiled or interpreted kernels)
from triton.language.standard import _sum_combine  # noqa: E402  (tl.sum's combine function; see _triton.py)

__all__ = ["bgmv_expand", "bgmv_shrink", "register_serving_backend", "sgmv_expand", "sgmv_shrink"]


# ------------------------------------------------------------------------------------------ BGMV (decode)
@triton.jit
def _bgmv_shrink_kernel(x_ptr, a_ptr, idx_ptr, v_ptr, R, D, stride_xt, stride_xd, stride_an, stride_ar, stride_ad,
                        BR: tl.constexpr, BK: tl.constexpr):
    """``v[t, rows] = A[slot(t), rows, :] @ x[t, :]``; zeros when slot(t) = -1."""
    dtype = v_ptr.dtype.element_ty                       # the matmul dtype
    t = tl.program_id(0)
    rr = tl.program_id(1) * BR + tl.arange(0, BR)
    slot = tl.load(idx_ptr + t)
    rows_used = tl.where(slot >= 0, R, 0)                # slot -1 (base only): no row of A is read, v_t = 0
    a_row = a_ptr + tl.maximum(slot, 0) * stride_an + rr[:, None] * stride_ar
    acc = tl.full((BR,), 0.0, tl.float32)
    for k0 in range(0, D, BK):
        rk = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + t * stride_xt + rk * stride_xd, mask=rk < D, other=0.0).to(dtype).to(tl.float32)
        a = tl.load(a_row + rk[None, :] * stride_ad, mask=(rr[:, None] < rows_used) & (rk[None, :] < D), other=0.0)
        acc += tl.reduce(a.to(dtype).to(tl.float32) * x[None, :], 1, _sum_combine)
    tl.store(v_ptr + t * R + rr, acc.to(dtype), mask=rr < R)


@triton.jit
def _bgmv_expand_kernel(v_ptr, b_ptr, idx_ptr, y_ptr, R, N, stride_vt, stride_vr, stride_bn, stride_bo, stride_br,
                        BN: tl.constexpr, BR: tl.constexpr):
    """``y[t, cols] = B[slot(t), cols, :] @ v[t, :]``; zeros when slot(t) = -1."""
    dtype = y_ptr.dtype.element_ty
    t = tl.program_id(0)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    slot = tl.load(idx_ptr + t)
    rows_used = tl.where(slot >= 0, N, 0)                # slot -1: no row of B is read, y_t = 0
    b_row = b_ptr + tl.maximum(slot, 0) * stride_bn + rn[:, None] * stride_bo
    acc = tl.full((BN,), 0.0, tl.float32)
    for r0 in range(0, R, BR):
        rr = r0 + tl.arange(0, BR)
        v = tl.load(v_ptr + t * stride_vt + rr * stride_vr, mask=rr < R, other=0.0).to(dtype).to(tl.float32)
        b = tl.load(b_row + rr[None, :] * stride_br, mask=(rn[:, None] < rows_used) & (rr[None, :] < R), other=0.0)
        acc += tl.reduce(b.to(dtype).to(tl.float32) * v[None, :], 1, _sum_combine)
    tl.store(y_ptr + t * N + rn, acc.to(dtype), mask=rn < N)


# ------------------------------------------------------------------------------------------ SGMV (prefill)
@triton.jit
def _sgmv_kernel(x_ptr, w_ptr, starts_ptr, ends_ptr, slots_ptr, out_ptr, N, D, stride_xt, stride_xd, stride_wn,
                 stride_wo, stride_wd, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """``out[rows, cols] = x[rows, :] @ W[slot, cols, :]^T`` for one tile of one segment's rows.

    Shrink: ``W = A`` (``cols`` = ranks, ``D = d_in``); expand: ``x = v``, ``W = B'`` (``cols`` = outputs, ``D = r``).
    """
    dtype = out_ptr.dtype.element_ty
    segment = tl.program_id(0)
    start = tl.load(starts_ptr + segment)
    end = tl.load(ends_ptr + segment)
    first_row = start + tl.program_id(1) * BM
    if first_row < end:                                  # the grid is sized for the longest segment
        slot = tl.load(slots_ptr + segment)
        cols_used = tl.where(slot >= 0, N, 0)            # slot -1: nothing of W is read, the rows get zeros
        rows = first_row + tl.arange(0, BM)
        cols = tl.program_id(2) * BN + tl.arange(0, BN)
        w_rows = w_ptr + tl.maximum(slot, 0) * stride_wn + cols[:, None] * stride_wo
        acc = tl.full((BM, BN), 0.0, tl.float32)
        for k0 in range(0, D, BK):
            rk = k0 + tl.arange(0, BK)
            x = tl.load(x_ptr + rows[:, None] * stride_xt + rk[None, :] * stride_xd,
                        mask=(rows[:, None] < end) & (rk[None, :] < D), other=0.0).to(dtype)
            w = tl.load(w_rows + rk[None, :] * stride_wd, mask=(cols[:, None] < cols_used) & (rk[None, :] < D),
                        other=0.0).to(dtype)
            acc = tl.dot(x, tl.trans(w), acc, input_precision="ieee")
        tl.store(out_ptr + rows[:, None] * N + cols[None, :], acc.to(dtype),
                 mask=(rows[:, None] < end) & (cols[None, :] < N))


# ------------------------------------------------------------------------------------------ launches
def _matmul_dtype(x: Tensor, w: Tensor) -> torch.dtype:
    """The dtype a PyTorch matmul of ``x`` and ``w`` returns here (autocast's dtype inside ``torch.autocast``)."""
    device_type = x.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(x.dtype, w.dtype)


def _check(name: str, t: Tensor, dims: int) -> None:
    if not isinstance(t, Tensor) or t.dim() != dims or not t.is_floating_point():
        raise TypeError(f"{name} must be a {dims}-D floating-point tensor, got "
                        f"{f'{t.dtype} {tuple(t.shape)}' if isinstance(t, Tensor) else type(t).__name__}")
    check_device(name, t)


def _check_pair(rows: Tensor, rows_name: str, stack: Tensor, stack_name: str, width_dim: int) -> None:
    _check(rows_name, rows, 2)
    _check(stack_name, stack, 3)
    if rows.shape[1] != stack.shape[width_dim]:
        raise ValueError(f"{rows_name} has {rows.shape[1]} features per row, {stack_name} {tuple(stack.shape)} "
                         f"expects {stack.shape[width_dim]}")
    if rows.device != stack.device:
        raise ValueError(f"{rows_name} is on {rows.device}, {stack_name} on {stack.device}")


def _check_indices(indices: Tensor, rows: int, device: torch.device) -> None:
    if not isinstance(indices, Tensor) or indices.dtype != torch.int64 or indices.dim() != 1:
        raise TypeError(f"indices must be a 1-D int64 tensor, got "
                        f"{f'{indices.dtype} {tuple(indices.shape)}' if isinstance(indices, Tensor) else indices!r}")
    if indices.shape[0] != rows:
        raise ValueError(f"indices has {indices.shape[0]} entries for {rows} rows")
    if indices.device != device:
        raise ValueError(f"indices is on {indices.device}, the rows on {device}")


def _block(n: int, low: int, high: int) -> int:
    return max(low, min(high, triton.next_power_of_2(max(n, 1))))


def bgmv_shrink(x: Tensor, A: Tensor, indices: Tensor) -> Tensor:
    """``v_t = x_t A[indices_t]^T`` (``[T, r]``), zero where ``indices_t = -1``: BGMV's shrink, nothing gathered."""
    _check_pair(x, "x", A, "A", 2)
    _check_indices(indices, x.shape[0], x.device)
    t, r, d = x.shape[0], A.shape[1], A.shape[2]
    v = torch.empty(t, r, dtype=_matmul_dtype(x, A), device=x.device)
    if t and r:
        br, bk = _block(r, 1, 16), _block(d, 16, 128 if interpreting() else 256)
        _bgmv_shrink_kernel[(t, triton.cdiv(r, br))](x, A, indices, v, r, d, x.stride(0), x.stride(1), A.stride(0),
                                                     A.stride(1), A.stride(2), BR=br, BK=bk, **launch_options())
    return v


def bgmv_expand(v: Tensor, B: Tensor, indices: Tensor) -> Tensor:
    """``y_t = v_t B[indices_t]^T`` (``[T, d_out]``), zero where ``indices_t = -1``: BGMV's expand."""
    _check_pair(v, "v", B, "B", 2)
    _check_indices(indices, v.shape[0], v.device)
    t, n, r = v.shape[0], B.shape[1], B.shape[2]
    y = torch.empty(t, n, dtype=_matmul_dtype(B, B), device=v.device)  # v is rounded to B's dtype, as in PyTorch
    if t and n:
        bn, br = _block(n, 16, 128), _block(r, 1, 64)
        _bgmv_expand_kernel[(t, triton.cdiv(n, bn))](v, B, indices, y, r, n, v.stride(0), v.stride(1), B.stride(0),
                                                     B.stride(1), B.stride(2), BN=bn, BR=br, **launch_options())
    return y


def _check_segments(segments: Segments, rows: int, device: torch.device) -> bool:
    """Check ``segments`` against the rows; return whether its runs cover rows ``0..T`` without gaps (then its
    device ``offsets`` hold every run's bounds; with gaps they cannot, and the host bounds are sent instead)."""
    if not isinstance(segments, Segments):
        raise TypeError(f"segments must be a lorakit.serving.kernels.Segments, got {type(segments).__name__}")
    if segments.n_rows != rows:
        raise ValueError(f"segments cover {segments.n_rows} rows, the input has {rows}")
    if segments.offsets.device != device or segments.slot_index.device != device:
        raise ValueError(f"segments' offsets/slot_index are on {segments.offsets.device}, the rows on {device}")
    bounds = list(zip(segments.starts, segments.ends, strict=True))
    return all(s == (bounds[i - 1][1] if i else 0) for i, (s, _) in enumerate(bounds))


def _sgmv(x: Tensor, w: Tensor, segments: Segments, out_dtype: torch.dtype, compute_dtype: torch.dtype) -> Tensor:
    t, n, d = x.shape[0], w.shape[1], w.shape[2]
    contiguous = _check_segments(segments, t, x.device)
    if contiguous:
        starts, ends = segments.offsets[:-1], segments.offsets[1:]
        out = torch.empty(t, n, dtype=compute_dtype, device=x.device)
    else:  # rows outside every run stay zero
        starts, ends = (torch.tensor(b, dtype=torch.int64, device=x.device) for b in (segments.starts, segments.ends))
        out = torch.zeros(t, n, dtype=compute_dtype, device=x.device)
    longest = max((e - s for s, e in zip(segments.starts, segments.ends, strict=True)), default=0)
    if longest and n:
        bm, bn, bk = _block(longest, 16, 64), _block(n, 16, 64), _block(d, 16, 64)
        grid = (len(segments), triton.cdiv(longest, bm), triton.cdiv(n, bn))
        _sgmv_kernel[grid](x, w, starts, ends, segments.slot_index, out, n, d, x.stride(0), x.stride(1),
                           w.stride(0), w.stride(1), w.stride(2), BM=bm, BN=bn, BK=bk, **launch_options())
    return out if out_dtype == compute_dtype else out.to(out_dtype)


def sgmv_shrink(x: Tensor, A: Tensor, segments: Segments) -> Tensor:
    """SGMV's shrink: ``x[s:e] A[slot]^T`` for every run ``(s, e, slot)`` of ``segments``; zero for ``slot = -1``."""
    _check_pair(x, "x", A, "A", 2)
    dtype = _matmul_dtype(x, A)
    return _sgmv(x, A, segments, dtype, dtype)


def sgmv_expand(v: Tensor, B: Tensor, segments: Segments) -> Tensor:
    """SGMV's expand: ``v[s:e] B[slot]^T`` for every run of ``segments`` (``v`` rounded to ``B``'s dtype first)."""
    _check_pair(v, "v", B, "B", 2)
    return _sgmv(v, B, segments, _matmul_dtype(v, B), _matmul_dtype(B, B))


def register_serving_backend(name: str = "triton") -> None:
    """Register these four kernels as ``lorakit.serving``'s backend ``name`` (``MultiLoRAModel(backend="triton")``)."""
    from lorakit.serving.kernels import register_backend

    register_backend(name, bgmv_shrink=bgmv_shrink, bgmv_expand=bgmv_expand, sgmv_shrink=sgmv_shrink,
                     sgmv_expand=sgmv_expand)
