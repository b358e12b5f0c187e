"""One batch's plan: validated row ids turned into the token-level metadata the kernels read (notebook 12, sec. 2).

A served forward knows, before the first layer runs, which adapter every row uses. Everything the kernels need
from that (token-level slot ids for BGMV, the row order and segment bounds for SGMV, the rows of each rank group
for the grouped layout) is computed once here on the host, from a short Python list, and reused by every layer,
as Punica's and vLLM's schedulers prepare their batch metadata once per step.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from lorakit.serving.kernels import segments_from_runs
from lorakit.serving.layout import TokenPlan

if TYPE_CHECKING:
    from lorakit.serving.bank import AdapterBank

__all__ = ["BatchPlan", "check_adapter_ids"]


def check_adapter_ids(adapter_ids: object) -> list[int]:
    """``adapter_ids`` (a 1-D integer tensor or a sequence of ints) as a list of Python ints; TypeError otherwise."""
    if isinstance(adapter_ids, torch.Tensor):
        if adapter_ids.dtype.is_floating_point or adapter_ids.dtype.is_complex or adapter_ids.dtype == torch.bool:
            raise TypeError(f"adapter_ids must hold integers (one adapter slot per row, -1 = base only), got a "
                            f"{adapter_ids.dtype} tensor")
        if adapter_ids.dim() != 1:
            raise ValueError(f"adapter_ids must be 1-D (one id per batch row), got shape {tuple(adapter_ids.shape)}")
        return [int(i) for i in adapter_ids.tolist()]
    if isinstance(adapter_ids, (str, bytes)) or not isinstance(adapter_ids, Sequence):
        raise TypeError(f"adapter_ids must be a 1-D integer tensor or a list of ints, got {type(adapter_ids).__name__}")
    bad = [i for i in adapter_ids if isinstance(i, bool) or not isinstance(i, numbers.Integral)]
    if bad:
        raise TypeError(f"adapter_ids must hold ints (slot ids; use bank.id_of(name) or a Router for names), got "
                        f"{bad[0]!r} of type {type(bad[0]).__name__}")
    return [int(i) for i in adapter_ids]


class BatchPlan:
    """What every served layer needs to know about one batch, computed once per forward (and per token count).

    Built by :meth:`AdapterBank.plan` from validated row ids; :meth:`for_tokens` turns them into the token-level
    :class:`~lorakit.serving.layout.TokenPlan` a layer's input needs (``tokens_per_row`` = sequence length).
    """

    def __init__(self, bank: AdapterBank, row_slots: list[int], sort: bool) -> None:
        self.bank, self.row_slots, self.sort = bank, row_slots, sort
        self.version = bank.version
        self.present = tuple(sorted(set(row_slots) - {-1}))
        self._memo: dict[int, TokenPlan] = {}

    @property
    def batch_size(self) -> int:
        return len(self.row_slots)

    def for_tokens(self, tokens_per_row: int) -> TokenPlan:
        if self.version != self.bank.version:
            raise RuntimeError("the bank changed (add/remove) after this batch was planned; plan the batch again")
        if tokens_per_row not in self._memo:
            self._memo[tokens_per_row] = self._build(tokens_per_row)
        return self._memo[tokens_per_row]

    def _token_rows(self, rows: list[int], t: int) -> torch.Tensor:
        row_index = torch.tensor(rows, dtype=torch.int64, device=self.bank.device)
        return (row_index[:, None] * t + torch.arange(t, device=self.bank.device)).reshape(-1)

    def _runs(self, slots_in_order: list[int], t: int) -> tuple[list[int], list[int], list[int]]:
        starts, ends, values = [], [], []
        for i, slot in enumerate(slots_in_order):
            if values and values[-1] == slot:
                ends[-1] = (i + 1) * t
            else:
                starts.append(i * t), ends.append((i + 1) * t), values.append(slot)
        return starts, ends, values

    def _build(self, t: int) -> TokenPlan:
        device, slots = self.bank.device, self.row_slots
        indices = torch.tensor(slots, dtype=torch.int64, device=device).repeat_interleave(t)
        order = sorted(range(len(slots)), key=lambda i: slots[i]) if self.sort else list(range(len(slots)))
        perm = None if order == list(range(len(slots))) else self._token_rows(order, t)
        segments = segments_from_runs(*self._runs([slots[i] for i in order], t), device)
        groups = {}
        if self.bank.layout == "grouped":
            place = self.bank._grouped_positions()
            for rank in sorted({place[s][0] for s in self.present}):
                rows = [i for i in order if slots[i] >= 0 and place[slots[i]][0] == rank]
                local = [place[slots[i]][1] for i in rows]
                local_t = torch.tensor(local, dtype=torch.int64, device=device).repeat_interleave(t)
                groups[rank] = (self._token_rows(rows, t), local_t, segments_from_runs(*self._runs(local, t), device))
        return TokenPlan(indices, perm, segments, self.present, groups)
