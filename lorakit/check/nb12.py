"""Checks for the "Check yourself" exercises of notebook 12 (serving many adapters).

Every expected answer is computed here with :mod:`lorakit.serving` (its kernels, layouts and capacity
arithmetic) from the exercise's parameters, never hard-coded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lorakit.check import grade_callable, grade_choice, grade_value, report
from lorakit.serving.capacity import llama_adapter_bytes
from lorakit.serving.kernels import reference_delta, segments_from_indices

__all__ = ["Q2", "Q4", "Q5_IDS", "matmul_pairs", "padding_fraction", "q1", "q2", "q3", "q4", "q5"]

#: 12.2: LLaMA size, rank, targets and bytes per number of the adapter to size.
Q2 = {"size": "7B", "r": 16, "targets": ("q_proj", "v_proj"), "bytes_per_number": 2}
#: 12.4: the bank's max_rank and the rank of the adapters it holds.
Q4 = {"max_rank": 64, "r": 8}
#: 12.5: one batch's adapter ids (-1 = base only).
Q5_IDS = (3, 1, 3, -1, 1, 3)


def q1(answer: object) -> bool:
    """12.1 (choice): why one merged model cannot serve a batch that mixes adapters."""
    return grade_choice("12.1", answer, "b", {
        "a": "no: in fp32 the merge is exact to rounding (notebook 04); precision is not the obstacle",
        "b": "a merged weight W + s B_a A_a is one matrix for one adapter: every row of the batch would get adapter "
             "a's update. Serving k adapters merged needs k full d_in x d_out copies and one forward per adapter "
             "group, while the unmerged form shares x W and adds each row's small (x A_i) B_i",
        "c": "no: rsLoRA only changes the scaling s, which a merge folds in like any other number",
        "d": "no: a merged model is a plain model and takes any batch size; the problem is which weights each row "
             "needs",
    })


def q2(answer: object) -> bool:
    """12.2: bytes of one LLaMA adapter with the settings in :data:`Q2` (eq. 5 of notebook 12)."""
    want = llama_adapter_bytes(Q2["size"], Q2["r"], Q2["targets"], Q2["bytes_per_number"])
    return grade_value("12.2", answer, want, rtol=1e-6,
                       hint=f"n_layers x sum over {list(Q2['targets'])} of r (d_in + d_out), times "
                            f"{Q2['bytes_per_number']} bytes; LLaMA-{Q2['size']}: 32 layers, d = 4096")


def _cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(12)
    cases = []
    for n, r, d_in, d_out, t in ((3, 2, 5, 4, 6), (1, 4, 8, 3, 3), (4, 1, 6, 6, 8)):
        A = torch.randn(n, r, d_in, generator=gen, dtype=torch.float64)
        B = torch.randn(n, d_out, r, generator=gen, dtype=torch.float64)
        x = torch.randn(t, d_in, generator=gen, dtype=torch.float64)
        ids = torch.randint(-1, n, (t,), generator=gen)
        ids[0] = -1
        cases.append((x, A, B, ids))
    return cases


def q3(fn: Callable | None) -> bool:
    """12.3: ``fn(x, A, B, ids)`` must return the per-row LoRA delta of eq. 2 (zero rows where ``ids == -1``)."""
    return grade_callable("12.3", fn, reference_delta, _cases(),
                          hint="for row t with i = ids[t] >= 0: (x[t] @ A[i].T) @ B[i].T (B already holds s B); "
                               "rows with ids[t] = -1 stay zero; return a [T, d_out] tensor")


def padding_fraction(r: int, max_rank: int) -> float:
    """Share of a padded slot (``max_rank (d_in + d_out)`` numbers per layer) that an adapter of rank ``r`` leaves
    zero: ``1 - r / max_rank``, whatever the layer widths."""
    if not 0 < r <= max_rank:
        raise ValueError(f"need 0 < r <= max_rank, got r={r}, max_rank={max_rank}")
    return 1.0 - r / max_rank


def q4(answer: object) -> bool:
    """12.4: the padded share of each slot in a bank with ``Q4["max_rank"]`` holding rank-``Q4["r"]`` adapters."""
    return grade_value("12.4", answer, padding_fraction(Q4["r"], Q4["max_rank"]), rtol=1e-6,
                       hint="a slot holds max_rank (d_in + d_out) numbers per layer; the adapter fills "
                            "r (d_in + d_out)")


def matmul_pairs(ids: Sequence[int], grouped: bool) -> int:
    """Shrink/expand matmul pairs SGMV runs on ``ids``: one per run of equal ids that names an adapter (not -1)."""
    order = sorted(ids) if grouped else list(ids)
    segments = segments_from_indices(torch.tensor(order, dtype=torch.int64))
    return sum(slot >= 0 for slot in segments.slots)


def q5(answer: object) -> bool:
    """12.5: ``(pairs with rows grouped by adapter, pairs in arrival order)`` for the batch :data:`Q5_IDS`."""
    hint = "count the runs of equal consecutive ids that are not -1, once after sorting and once as they come"
    if answer is None:
        return report("12.5", None, hint=hint)
    want = (matmul_pairs(Q5_IDS, grouped=True), matmul_pairs(Q5_IDS, grouped=False))
    if not isinstance(answer, (tuple, list)) or len(answer) != 2:
        return report("12.5", False, f"expected a pair of ints, got {answer!r}", hint)
    if tuple(answer) == want:
        return report("12.5", True, f"{want[0]} pairs grouped, {want[1]} in arrival order")
    if tuple(answer) == want[::-1]:
        return report("12.5", False, "the two counts are swapped", hint)
    return report("12.5", False, f"got {tuple(answer)}", hint)
