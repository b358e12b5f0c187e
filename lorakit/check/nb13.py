"""Checks for the "Check yourself" exercises of notebook 13 (the PEFT family).

Every expected answer is computed here from lorakit's functions or from the exercise's parameters, never
hard-coded: (IA)³'s count from the layer shapes, prefix tuning's cache bytes from
:func:`lorakit.family.prefix_cache_bytes`, VeRA's count from :class:`lorakit.family.VeRALinear`'s parameters.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lorakit.check import grade_callable, grade_choice, grade_value
from lorakit.family.prefix_tuning import prefix_cache_bytes
from lorakit.family.vera import VeRALinear, VeRAProjections, vera_projections
from lorakit.memory import llama_shape

__all__ = ["ia3_llama_parameters", "q1", "q2", "q3", "q4", "vera_parameters_reference"]


def ia3_llama_parameters(size: str = "7B") -> int:
    """(IA)³ with PEFT's LLaMA defaults: ``d_model`` (k), ``d_model`` (v) and ``d_ff`` (down's input) per block."""
    shape = llama_shape(size)
    return shape["n_layers"] * (2 * shape["d_model"] + shape["d_ff"])


def q1(answer: object, size: str = "7B") -> bool:
    """13.1: trainable (IA)³ parameters of LLaMA-``size`` with PEFT's defaults (k_proj, v_proj, down_proj)."""
    return grade_value("13.1", answer, ia3_llama_parameters(size), rtol=0,
                       hint="per block: one scale per output of k_proj and v_proj, one per INPUT of down_proj (d_ff)")


def q2(answer: object, n: int = 20, layers: int = 32, d: int = 4096, batch: int = 1, bytes_per_value: int = 2) -> bool:
    """13.2: extra KV-cache bytes of a prefix of ``n`` virtual tokens (eq. 14)."""
    want = prefix_cache_bytes(n, layers, d, batch, bytes_per_value)
    return grade_value("13.2", answer, want, rtol=0,
                       hint="keys AND values, in every layer: 2 x L x n x d numbers, times the bytes per number")


def q3(answer: object) -> bool:
    """13.3 (choice): which method's trained model can run at exactly the base model's inference cost?"""
    return grade_choice("13.3", answer, "c", {
        "a": "no: a Houlsby adapter is nonlinear (U relu(D h)), so it cannot be folded into W; it stays an extra layer",
        "b": "no: prefix tuning adds n keys and values to every layer's attention, at every inference step",
        "c": "yes: diag(l) W is just another weight matrix, so (IA)^3 merges (as LoRA and VeRA do)",
        "d": "no: the soft prompt occupies n positions of every input; nothing can be folded into a weight",
    })


def vera_parameters_reference(r: int, shapes: list[tuple[int, int]]) -> int:
    """VeRA's trainable count for layers of ``[out, in]`` shapes, counted on real :class:`VeRALinear` layers."""
    if not shapes:
        raise ValueError("shapes must list at least one [out, in] layer shape")
    max_in, max_out = max(s[1] for s in shapes), max(s[0] for s in shapes)
    A, B = vera_projections(r, max_in, max_out)
    proj = VeRAProjections(A.to("meta"), B.to("meta"))
    layers = [VeRALinear(nn.Linear(i, o, bias=False, device="meta"), proj) for o, i in shapes]  # no weights allocated
    return sum(p.numel() for layer in layers for p in layer.parameters() if p.requires_grad)


def q4(fn: Callable | None) -> bool:
    """13.4: ``fn(r, shapes) -> int``, VeRA's trainable parameters for layers of the given ``[out, in]`` shapes."""
    cases = [(8, [(4, 4)]), (256, [(4096, 4096), (4096, 4096)]), (64, [(11008, 4096), (4096, 11008), (128, 32)])]
    return grade_callable("13.4", fn, vera_parameters_reference, cases, rtol=0, atol=0,
                          hint="A and B are shared and frozen: each layer trains d (r numbers) and b (d_out numbers)")

