"""The batched-LoRA kernels of notebook 12: shrink ``d_in -> r`` and expand ``r -> d_out``, per row's adapter.

For a batch whose row ``t`` uses adapter ``a(t)`` (``-1``: none), every served layer adds (notebook 12, eq. 2)::

    y_t = x_t W^T + (x_t A_{a(t)}^T) B'_{a(t)}^T,        B' = s B  (the scaling is folded into B)

computed in two steps, as Punica (Chen et al. 2023) and vLLM split it: **shrink** ``v_t = x_t A_{a(t)}^T``
(``[T, r]``) and **expand** ``y_t = v_t B'_{a(t)}^T`` (``[T, d_out]``). Three ways to run them, all pure PyTorch:

* :func:`bgmv` (*gather + bmm*, Punica's BGMV): gather each row's ``A`` and ``B`` from the stack and run one batched
  matrix-vector product. One call per layer whatever the adapters are, no host synchronisation (so it can be
  captured in a CUDA graph); the price is the gathered copy, ``T r (d_in + d_out)`` numbers. Made for decode.
* :func:`sgmv` (*segmented*, Punica's SGMV): rows are grouped so that each adapter's rows are contiguous
  (:class:`Segments`), then one pair of plain matrix products runs per segment. No gathered copies and full
  matrix-matrix products, but one pair of calls per segment, and the segment bounds must be known on the host.
  Made for prefill, where a segment holds a whole prompt.
* :func:`masked` (the naive loop, for comparison): every adapter present runs over the *whole* batch, and a
  mask keeps its rows: ``n_adapters`` times the bypass work.

The tensor contract (what a Triton kernel registered with :func:`register_backend` receives):

==============  =====================  ===========================================================
argument        shape, dtype           meaning
==============  =====================  ===========================================================
``x``           ``[T, d_in]``, float   rows (tokens), contiguous; same dtype as ``A`` (autocast aside)
``A``           ``[N, r, d_in]``       stacked shrink matrices (PEFT's ``lora_A.weight`` of each adapter)
``B``           ``[N, d_out, r]``      stacked expand matrices, *already multiplied by the scaling*
``indices``     ``[T]``, int64         the row's slot in ``A``/``B``, or ``-1`` for "no adapter" (BGMV)
``segments``    :class:`Segments`      consecutive runs of rows sharing one slot (SGMV)
``v``           ``[T, r]``             the shrink output, the expand input
==============  =====================  ===========================================================

Every function returns the *delta* only (the caller adds it to the base output), zero on rows without an adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "BACKENDS", "KERNELS", "Segments", "bgmv", "bgmv_expand", "bgmv_shrink", "check_backend", "check_kernel",
    "masked", "reference_delta", "register_backend", "segments_from_indices", "segments_from_runs", "sgmv",
    "sgmv_expand", "sgmv_shrink",
]

#: The kernels a served model can run (``MultiLoRAModel(kernel=...)``).
KERNELS = ("bgmv", "sgmv", "masked")


@dataclass(frozen=True)
class Segments:
    """Consecutive runs of rows that use one adapter slot (the SGMV metadata of Punica and vLLM).

    Run ``k`` covers rows ``starts[k]:ends[k]`` and uses slot ``slots[k]`` (``-1``: no adapter, skipped).
    ``starts``/``ends``/``slots`` are host integers (the PyTorch backend loops over them); ``offsets``
    (``[S + 1]``, int64: ``starts`` then the last end) and ``slot_index`` (``[S]``, int64) hold the same on the
    rows' device, the form a GPU kernel reads.
    """

    starts: tuple[int, ...]
    ends: tuple[int, ...]
    slots: tuple[int, ...]
    offsets: torch.Tensor
    slot_index: torch.Tensor

    @property
    def n_rows(self) -> int:
        return self.ends[-1] if self.ends else 0

    def __len__(self) -> int:
        return len(self.slots)


def segments_from_indices(indices: torch.Tensor) -> Segments:
    """The runs of equal consecutive values of ``indices`` (``[T]``, int64). One host synchronisation.

    Unsorted indices are allowed: they only give more, shorter runs. Sort rows by adapter first (the serving
    model does, see ``MultiLoRAModel(sort=True)``) to get one run per adapter.
    """
    _check_indices(indices, None)
    if indices.numel() == 0:
        empty = torch.zeros(1, dtype=torch.int64, device=indices.device)
        return Segments((), (), (), empty, empty[:0])
    values, counts = torch.unique_consecutive(indices, return_counts=True)
    ends = torch.cumsum(counts, 0)
    host = torch.stack([ends - counts, ends, values]).tolist()  # the one device -> host copy
    offsets = torch.cat([ends.new_zeros(1), ends])
    return Segments(tuple(host[0]), tuple(host[1]), tuple(host[2]), offsets, values)


def segments_from_runs(starts: list[int], ends: list[int], slots: list[int], device: torch.device) -> Segments:
    """:class:`Segments` from runs known on the host (no device synchronisation; the serving plan uses this)."""
    if not (len(starts) == len(ends) == len(slots)):
        raise ValueError(f"starts, ends and slots must have one entry per run, got {len(starts)}, {len(ends)}, "
                         f"{len(slots)}")
    offsets = torch.tensor([*starts[:1], *ends] if starts else [0], dtype=torch.int64, device=device)
    slot_index = torch.tensor(list(slots), dtype=torch.int64, device=device)
    return Segments(tuple(starts), tuple(ends), tuple(slots), offsets, slot_index)


# ------------------------------------------------------------------------------------------- input checks
def _check_stack(A: torch.Tensor, B: torch.Tensor | None, name: str = "A") -> None:
    if not isinstance(A, torch.Tensor) or A.dim() != 3 or not A.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor [N, r, d_in], got {_describe(A)}")
    if B is not None:
        if not isinstance(B, torch.Tensor) or B.dim() != 3 or not B.is_floating_point():
            raise TypeError(f"B must be a floating-point tensor [N, d_out, r], got {_describe(B)}")
        if B.shape[0] != A.shape[0] or B.shape[2] != A.shape[1]:
            raise ValueError(f"B {tuple(B.shape)} does not match A {tuple(A.shape)}: expected [{A.shape[0]}, d_out, "
                             f"{A.shape[1]}]")


def _check_rows(x: torch.Tensor, width: int, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor [T, features], got {_describe(x)}")
    if x.shape[1] != width:
        raise ValueError(f"{name} has {x.shape[1]} features per row, the adapter stack expects {width}")


def _check_indices(indices: torch.Tensor, n_rows: int | None) -> None:
    if not isinstance(indices, torch.Tensor) or indices.dtype != torch.int64 or indices.dim() != 1:
        raise TypeError(f"indices must be a 1-D int64 tensor, got {_describe(indices)}")
    if n_rows is not None and indices.shape[0] != n_rows:
        raise ValueError(f"indices has {indices.shape[0]} entries for {n_rows} rows")


def _check_segments(segments: Segments, n_rows: int) -> None:
    if not isinstance(segments, Segments):
        raise TypeError(f"segments must be a lorakit.serving.kernels.Segments, got {type(segments).__name__}")
    if segments.n_rows != n_rows:
        raise ValueError(f"segments cover {segments.n_rows} rows, the input has {n_rows}")


def _describe(t: object) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} tensor of shape {tuple(t.shape)}"
    return type(t).__name__


def _matmul_dtype(x: torch.Tensor, w: torch.Tensor) -> torch.dtype:
    """The dtype a matmul of ``x`` and ``w`` returns here (the autocast dtype inside ``torch.autocast``)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return torch.promote_types(x.dtype, w.dtype)


# ------------------------------------------------------------------------------------------- torch backend
def _torch_bgmv_shrink(x: torch.Tensor, A: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    keep = indices >= 0
    gathered = A.index_select(0, indices.clamp_min(0))  # [T, r, d_in]: the gather that BGMV pays for
    # row vector times a transposed view ([T, 1, d_in] @ [T, d_in, r]): on CPU 2-3x faster than [T, r, d_in] @ x
    v = torch.bmm(x.unsqueeze(1), gathered.transpose(1, 2)).squeeze(1)  # [T, r]
    return torch.where(keep.unsqueeze(-1), v, v.new_zeros(()))


def _torch_bgmv_expand(v: torch.Tensor, B: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    keep = indices >= 0
    gathered = B.index_select(0, indices.clamp_min(0))  # [T, d_out, r]
    y = torch.bmm(v.unsqueeze(1).to(gathered.dtype), gathered.transpose(1, 2)).squeeze(1)  # [T, d_out]
    return torch.where(keep.unsqueeze(-1), y, y.new_zeros(()))


def _torch_sgmv_shrink(x: torch.Tensor, A: torch.Tensor, segments: Segments) -> torch.Tensor:
    v = x.new_zeros((x.shape[0], A.shape[1]), dtype=_matmul_dtype(x, A))
    for start, end, slot in zip(segments.starts, segments.ends, segments.slots, strict=True):
        if slot >= 0:
            v[start:end] = x[start:end] @ A[slot].t()
    return v


def _torch_sgmv_expand(v: torch.Tensor, B: torch.Tensor, segments: Segments) -> torch.Tensor:
    y = v.new_zeros((v.shape[0], B.shape[1]), dtype=_matmul_dtype(v, B))
    for start, end, slot in zip(segments.starts, segments.ends, segments.slots, strict=True):
        if slot >= 0:
            y[start:end] = v[start:end].to(B.dtype) @ B[slot].t()
    return y


def _torch_masked(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, indices: torch.Tensor,
                  slots: tuple[int, ...]) -> torch.Tensor:
    y = x.new_zeros((x.shape[0], B.shape[1]), dtype=_matmul_dtype(x, B))
    for slot in slots:
        if slot >= 0:  # the whole batch through this adapter, then keep its rows
            y = y + torch.where((indices == slot).unsqueeze(-1), (x @ A[slot].t()) @ B[slot].t(), 0.0).to(y.dtype)
    return y


#: ``{backend: {operation: function}}``; operations: ``bgmv_shrink(x, A, indices)``, ``bgmv_expand(v, B, indices)``,
#: ``sgmv_shrink(x, A, segments)``, ``sgmv_expand(v, B, segments)`` (signatures as the public functions below).
BACKENDS: dict[str, dict[str, Callable]] = {
    "torch": {
        "bgmv_shrink": _torch_bgmv_shrink,
        "bgmv_expand": _torch_bgmv_expand,
        "sgmv_shrink": _torch_sgmv_shrink,
        "sgmv_expand": _torch_sgmv_expand,
    }
}
_OPERATIONS = ("bgmv_shrink", "bgmv_expand", "sgmv_shrink", "sgmv_expand")


def register_backend(name: str, **operations: Callable) -> None:
    """Plug in another implementation (e.g. ``"triton"``) of the four operations, each with the torch signature.

    Operations that are not given fall back to the PyTorch ones, so a backend can start with one kernel.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    unknown = sorted(set(operations) - set(_OPERATIONS))
    if unknown:
        raise ValueError(f"unknown operations {unknown}; a backend implements some of {list(_OPERATIONS)}")
    for op, fn in operations.items():
        if not callable(fn):
            raise TypeError(f"{op} must be callable, got {type(fn).__name__}")
    BACKENDS[name] = {**BACKENDS["torch"], **operations}


def check_backend(backend: object) -> str:
    """``backend`` if registered, else a ValueError listing the registered ones. ``"triton"`` registers itself on
    first use (:func:`lorakit.kernels.bgmv.register_serving_backend`; ImportError with the install hint without it)."""
    if backend == "triton" and "triton" not in BACKENDS:
        from lorakit.kernels.bgmv import register_serving_backend

        register_serving_backend()
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {backend!r}")
    return backend


def check_kernel(kernel: object) -> str:
    """``kernel`` if it is one of :data:`KERNELS`, else a ValueError."""
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return kernel


# ------------------------------------------------------------------------------------------- public API
def bgmv_shrink(x: torch.Tensor, A: torch.Tensor, indices: torch.Tensor, *, backend: str = "torch") -> torch.Tensor:
    """``v_t = x_t A[indices_t]^T`` (``[T, r]``), zero where ``indices_t = -1``: BGMV's shrink."""
    _check_stack(A, None)
    _check_rows(x, A.shape[2])
    _check_indices(indices, x.shape[0])
    return BACKENDS[check_backend(backend)]["bgmv_shrink"](x, A, indices)


def bgmv_expand(v: torch.Tensor, B: torch.Tensor, indices: torch.Tensor, *, backend: str = "torch") -> torch.Tensor:
    """``y_t = v_t B[indices_t]^T`` (``[T, d_out]``), zero where ``indices_t = -1``: BGMV's expand."""
    _check_stack(B, None, "B")
    _check_rows(v, B.shape[2], "v")
    _check_indices(indices, v.shape[0])
    return BACKENDS[check_backend(backend)]["bgmv_expand"](v, B, indices)


def bgmv(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, indices: torch.Tensor, *,
         backend: str = "torch") -> torch.Tensor:
    """Gather + bmm: the LoRA delta of every row with its own adapter, ``(x_t A_i^T) B_i^T`` for ``i = indices_t``."""
    _check_stack(A, B)
    return bgmv_expand(bgmv_shrink(x, A, indices, backend=backend), B, indices, backend=backend)


def sgmv_shrink(x: torch.Tensor, A: torch.Tensor, segments: Segments, *, backend: str = "torch") -> torch.Tensor:
    """SGMV's shrink: ``x[s:e] A[slot]^T`` for every run ``(s, e, slot)`` of ``segments``; zero for ``slot = -1``."""
    _check_stack(A, None)
    _check_rows(x, A.shape[2])
    _check_segments(segments, x.shape[0])
    return BACKENDS[check_backend(backend)]["sgmv_shrink"](x, A, segments)


def sgmv_expand(v: torch.Tensor, B: torch.Tensor, segments: Segments, *, backend: str = "torch") -> torch.Tensor:
    """SGMV's expand: ``v[s:e] B[slot]^T`` for every run of ``segments``; zero for ``slot = -1``."""
    _check_stack(B, None, "B")
    _check_rows(v, B.shape[2], "v")
    _check_segments(segments, v.shape[0])
    return BACKENDS[check_backend(backend)]["sgmv_expand"](v, B, segments)


def sgmv(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, segments: Segments, *,
         backend: str = "torch") -> torch.Tensor:
    """Segmented: one shrink and one expand matmul per run of rows sharing an adapter (rows grouped beforehand)."""
    _check_stack(A, B)
    return sgmv_expand(sgmv_shrink(x, A, segments, backend=backend), B, segments, backend=backend)


def masked(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, indices: torch.Tensor,
           slots: tuple[int, ...] | None = None) -> torch.Tensor:
    """The naive loop: each adapter in ``slots`` (default: those in ``indices``) over the whole batch, masked.

    Equal to :func:`bgmv`, at ``len(slots)`` times the bypass FLOPs; the baseline the batched kernels beat.
    """
    _check_stack(A, B)
    _check_rows(x, A.shape[2])
    _check_indices(indices, x.shape[0])
    if slots is None:
        slots = tuple(torch.unique(indices).tolist())
    return _torch_masked(x, A, B, indices, tuple(slots))


def reference_delta(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Row by row in float64, the definition of eq. 2 that the tests compare every kernel with."""
    _check_stack(A, B)
    _check_rows(x, A.shape[2])
    _check_indices(indices, x.shape[0])
    out = torch.zeros(x.shape[0], B.shape[1], dtype=torch.float64, device=x.device)
    for t, slot in enumerate(indices.tolist()):
        if slot >= 0:
            out[t] = (x[t].double() @ A[slot].double().t()) @ B[slot].double().t()
    return out
