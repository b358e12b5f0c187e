"""How an adapter bank lays out N adapters of mixed ranks in memory (notebook 12, sections 2 and 5).

Two layouts, both with the scaling folded into ``B`` (``B' = s B``), so no per-adapter scalar travels with a batch:

* :class:`PaddedLayout` (as vLLM: ``max_loras`` slots of ``max_lora_rank``): per served layer one tensor
  ``A [capacity, r_max, d_in]`` and one ``B [capacity, d_out, r_max]``, contiguous, slot-major. An adapter of rank
  ``r < r_max`` fills rows ``:r`` of its ``A`` slot and columns ``:r`` of its ``B`` slot and leaves zeros in the
  rest; the zeros add nothing to the result (``x A^T`` is zero there and meets zero columns of ``B``), so the
  answer is exact, but every adapter costs ``r_max (d_in + d_out)`` numbers and the kernels do ``r_max`` work.
  One stack for all adapters: one BGMV call per layer.
* :class:`GroupedLayout`: one stack per distinct rank, ``A_r [n_r, r, d_in]`` and ``B_r [n_r, d_out, r]``.
  Each adapter costs exactly ``r (d_in + d_out)`` numbers (the goal of S-LoRA's unified paging, Sheng et al. 2023,
  reached here without pages), and no padded FLOPs are spent; the price is one kernel call per rank group.

Both keep everything on the bank's device in the bank's dtype. A layer the adapter does not adapt is zero in its
slot (padded) or in its group (grouped): serving an adapter on fewer layers than the bank supports is exact too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorakit.serving import kernels

__all__ = ["LAYOUTS", "GroupedLayout", "LayerFactors", "PaddedLayout", "TokenPlan"]

#: The layout names ``AdapterBank(layout=...)`` accepts.
LAYOUTS = ("padded", "grouped")

#: ``{layer name: (A [r, d_in], B' [d_out, r]) or None (layer not adapted)}`` for one adapter, in the bank dtype.
LayerFactors = dict[str, "tuple[torch.Tensor, torch.Tensor] | None"]


@dataclass
class TokenPlan:
    """Per-batch kernel metadata for one number of tokens per row, built once and shared by every layer.

    ``indices``: token-level slot ids (``[T]``, int64, ``-1`` = base only) in the batch's order (BGMV, masked).
    ``perm``: token permutation that makes each slot's tokens contiguous (``None`` when they already are);
    ``segments``: the runs of slots in that order (SGMV). ``present``: the distinct slots in use (masked).
    ``groups``: for the grouped layout, ``{rank: (token rows [n], local indices [n], segments)}``, rows sorted by slot.
    """

    indices: torch.Tensor
    perm: torch.Tensor | None
    segments: kernels.Segments
    present: tuple[int, ...]
    groups: dict[int, tuple[torch.Tensor, torch.Tensor, kernels.Segments]]


def _scatter_rows(out_sorted: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    """Undo a row permutation: ``result[perm[k]] = out_sorted[k]``."""
    if perm is None:
        return out_sorted
    return torch.empty_like(out_sorted).index_copy_(0, perm, out_sorted)


class PaddedLayout:
    """``A [capacity, r_max, d_in]``, ``B' [capacity, d_out, r_max]`` per layer; zero-padded to ``r_max``."""

    kind = "padded"

    def __init__(self, shapes: dict[str, tuple[int, int]], capacity: int, max_rank: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.max_rank = max_rank
        self.A = {n: torch.zeros(capacity, max_rank, i, dtype=dtype, device=device) for n, (i, _) in shapes.items()}
        self.B = {n: torch.zeros(capacity, o, max_rank, dtype=dtype, device=device) for n, (_, o) in shapes.items()}

    @torch.no_grad()
    def write(self, slot: int, rank: int, factors: LayerFactors) -> None:
        for name in self.A:
            self.A[name][slot].zero_()
            self.B[name][slot].zero_()
            if factors.get(name) is not None:
                a, b = factors[name]
                self.A[name][slot, :rank].copy_(a)
                self.B[name][slot, :, :rank].copy_(b)

    @torch.no_grad()
    def clear(self, slot: int, rank: int) -> None:
        self.write(slot, rank, {})

    def tensors(self) -> list[torch.Tensor]:
        return [*self.A.values(), *self.B.values()]

    def slot_numbers(self, rank: int) -> int:
        """Numbers one adapter occupies here: ``r_max (d_in + d_out)`` per layer, whatever its rank."""
        return sum(a.shape[1] * (a.shape[2] + b.shape[1]) for a, b in zip(self.A.values(), self.B.values(),
                                                                          strict=True))

    def delta(self, name: str, x: torch.Tensor, plan: TokenPlan, kernel: str, backend: str) -> torch.Tensor:
        A, B = self.A[name], self.B[name]
        if kernel == "bgmv":
            return kernels.bgmv(x, A, B, plan.indices, backend=backend)
        if kernel == "masked":
            return kernels.masked(x, A, B, plan.indices, plan.present)
        xs = x if plan.perm is None else x.index_select(0, plan.perm)
        return _scatter_rows(kernels.sgmv(xs, A, B, plan.segments, backend=backend), plan.perm)


class GroupedLayout:
    """One stack per rank: ``A_r [n_r, r, d_in]``, ``B'_r [n_r, d_out, r]``; each adapter at its own rank."""

    kind = "grouped"

    def __init__(self, shapes: dict[str, tuple[int, int]], capacity: int, max_rank: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.shapes, self.dtype, self.device = shapes, dtype, device
        self.members: dict[int, list[int]] = {}  # rank -> slots, in stack order
        self.A: dict[str, dict[int, torch.Tensor]] = {n: {} for n in shapes}
        self.B: dict[str, dict[int, torch.Tensor]] = {n: {} for n in shapes}

    def position(self, slot: int, rank: int) -> int:
        return self.members[rank].index(slot)

    @torch.no_grad()
    def write(self, slot: int, rank: int, factors: LayerFactors) -> None:
        """Append the adapter to its rank's stack (new tensors are built first, then swapped in)."""
        new_A, new_B = {}, {}
        for name, (d_in, d_out) in self.shapes.items():
            a = torch.zeros(1, rank, d_in, dtype=self.dtype, device=self.device)
            b = torch.zeros(1, d_out, rank, dtype=self.dtype, device=self.device)
            if factors.get(name) is not None:
                a[0].copy_(factors[name][0])
                b[0].copy_(factors[name][1])
            old_a, old_b = self.A[name].get(rank), self.B[name].get(rank)
            new_A[name] = a if old_a is None else torch.cat([old_a, a])
            new_B[name] = b if old_b is None else torch.cat([old_b, b])
        for name in self.shapes:
            self.A[name][rank], self.B[name][rank] = new_A[name], new_B[name]
        self.members.setdefault(rank, []).append(slot)

    @torch.no_grad()
    def clear(self, slot: int, rank: int) -> None:
        """Drop the adapter's row from its rank stack (a group that empties is deleted)."""
        pos = self.position(slot, rank)
        keep = [i for i in range(len(self.members[rank])) if i != pos]
        for name in self.shapes:
            if keep:
                index = torch.tensor(keep, device=self.device)
                self.A[name][rank] = self.A[name][rank].index_select(0, index)
                self.B[name][rank] = self.B[name][rank].index_select(0, index)
            else:
                del self.A[name][rank], self.B[name][rank]
        self.members[rank].pop(pos)
        if not self.members[rank]:
            del self.members[rank]

    def tensors(self) -> list[torch.Tensor]:
        return [t for per_rank in (*self.A.values(), *self.B.values()) for t in per_rank.values()]

    def slot_numbers(self, rank: int) -> int:
        """Numbers one adapter of rank ``r`` occupies here: exactly ``r (d_in + d_out)`` per layer."""
        return sum(rank * (d_in + d_out) for d_in, d_out in self.shapes.values())

    def delta(self, name: str, x: torch.Tensor, plan: TokenPlan, kernel: str, backend: str) -> torch.Tensor:
        out = None
        for rank, (rows, local, segments) in plan.groups.items():
            A, B = self.A[name][rank], self.B[name][rank]
            xs = x.index_select(0, rows)
            if kernel == "bgmv":
                part = kernels.bgmv(xs, A, B, local, backend=backend)
            elif kernel == "masked":
                part = kernels.masked(xs, A, B, local, tuple(sorted(set(segments.slots))))
            else:
                part = kernels.sgmv(xs, A, B, segments, backend=backend)
            if out is None:
                out = x.new_zeros((x.shape[0], B.shape[1]), dtype=part.dtype)
            out.index_copy_(0, rows, part.to(out.dtype))
        if out is None:  # no adapter in the batch
            out = x.new_zeros((x.shape[0], self.shapes[name][1]))
        return out
