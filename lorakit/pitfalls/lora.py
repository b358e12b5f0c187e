"""Deliberately wrong LoRA snippets that notebooks 01-05 run, to measure what goes wrong.

Each function re-states, in the course's own words and code, a mistake found in study guides and interview
write-ups; its docstring says what it gets wrong and which notebook shows it. Nothing in lorakit calls them.

* :func:`compute_reduction_claim` (notebook 01): base FLOPs divided by bypass FLOPs, printed as a "compute
  reduction", although the bypass runs *in addition to* the base layer.
* :func:`dropout_on_both_paths` (notebook 01): dropout applied to the layer input before the frozen path too.
* :func:`merge_without_scaling` (notebook 04): ``W0 + B @ A``, dropping ``alpha/r``.
* :func:`allclose_says_restored` (notebook 04): "unmerge restores the base: True" from ``torch.allclose``.
* :func:`fp16_adam_bytes_without_master` (notebook 05): training memory as ``params x 2 B x 4``.
* :func:`rank_rule_of_thumb` (notebook 03): "rank = sqrt(min(d_in, d_out)) / 4", a heuristic put to the test.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "allclose_says_restored", "compute_reduction_claim", "dropout_on_both_paths", "fp16_adam_bytes_without_master",
    "merge_without_scaling", "rank_rule_of_thumb",
]


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def compute_reduction_claim(d_model: int, r: int, n_layers: int, tokens: int, n_proj: int = 4) -> float:
    """WRONG (notebook 01): "compute reduction" = FLOPs of the frozen projections / FLOPs of the LoRA bypass.

    The snippet counts ``tokens * d^2`` per projection for the base and ``2 * tokens * d * r`` for the bypass
    and divides the two. But a LoRA forward computes the base projection *and* the bypass: the ratio of the two
    is how small the bypass is next to the layer, not a saving (the forward costs ``1 + 2r/d`` times more).
    """
    for name, v in (("d_model", d_model), ("r", r), ("n_layers", n_layers), ("tokens", tokens), ("n_proj", n_proj)):
        _positive_int(name, v)
    base = tokens * d_model * d_model * n_proj * n_layers
    bypass = tokens * d_model * r * 2 * n_proj * n_layers
    return base / bypass


def dropout_on_both_paths(x: torch.Tensor, weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: float,
                          p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """WRONG (notebook 01): ``W0 dropout(x) + s B A dropout(x)``, dropout before the frozen path as well.

    LoRA (and PEFT's ``lora_dropout``) drop entries of the *bypass* input only: ``W0 x + s B A dropout(x)``.
    Dropping entries of ``x`` before ``W0`` too perturbs the pretrained path with a random, full-rank change on
    every training step, even when ``B = 0``.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p must be in [0, 1), got {p}")
    keep = torch.empty_like(x).bernoulli_(1.0 - p, generator=generator) / (1.0 - p)
    x_d = x * keep
    return x_d @ weight.T + scaling * (x_d @ A.T) @ B.T


def merge_without_scaling(W0: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """WRONG (notebook 04): the merged weight written as ``W0 + B @ A``; the trained layer used ``W0 + s B @ A``."""
    return W0 + B @ A


def allclose_says_restored(before: torch.Tensor, after: torch.Tensor) -> bool:
    """MISLEADING (notebook 04): "unmerge restores the base weight: True", from ``torch.allclose``.

    ``allclose`` (rtol 1e-5, atol 1e-8) answers True for a round trip that changed many entries by one unit in
    the last place; whether the weight is restored *bit for bit* is ``torch.equal``.
    """
    return bool(torch.allclose(before, after))


def fp16_adam_bytes_without_master(n_params: int) -> int:
    """WRONG (notebook 05): training memory as ``n_params x 2 bytes x 4`` (fp16 weight, grad, and Adam's m, v).

    Mixed-precision Adam keeps Adam's moments and a master copy of the weights in fp32: 16 bytes per trainable
    parameter, twice this count.
    """
    _positive_int("n_params", n_params)
    return n_params * 2 * 4


def rank_rule_of_thumb(d_in: int, d_out: int) -> float:
    """A HEURISTIC from interview write-ups (notebook 03 tests it): ``rank ~ sqrt(min(d_in, d_out)) / 4``."""
    _positive_int("d_in", d_in)
    _positive_int("d_out", d_out)
    return math.sqrt(min(d_in, d_out)) / 4
