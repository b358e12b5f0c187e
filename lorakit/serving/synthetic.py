"""Synthetic adapters and request mixes, for the benchmark, the tests and notebook 12's timing cells.

Serving speed does not depend on what an adapter learned, only on its shapes and on which adapters a batch asks
for, so ``bench/serving.py`` serves random adapters (seeded, PEFT-keyed, nonzero ``B`` so that every one changes
the output) to requests drawn from a popularity law:

* ``"uniform"``: every adapter equally likely;
* ``"zipf"``: adapter ``k`` (1-based) with probability proportional to ``k^-exponent`` (``exponent = 1``: a few
  adapters take most requests, the long tail of a multi-tenant service, as in the S-LoRA evaluation).
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from lorakit.peft.config import LoRAConfig
from lorakit.peft.io import PEFT_PREFIX
from lorakit.peft.targets import select_target_modules

__all__ = ["POPULARITY", "popularity", "random_adapter", "request_mix"]

#: Popularity laws :func:`request_mix` knows.
POPULARITY = ("uniform", "zipf")


def random_adapter(
    model: nn.Module,
    r: int,
    target_modules: list[str] | str,
    alpha: float | None = None,
    rslora: bool = False,
    seed: int = 0,
    b_std: float = 0.02,
) -> tuple[dict[str, torch.Tensor], LoRAConfig]:
    """A seeded random LoRA adapter for ``model``: ``(PEFT-keyed fp32 tensors, LoRAConfig)``.

    ``A ~ N(0, 1/d_in)`` and ``B ~ N(0, b_std^2)`` (nonzero, unlike a fresh adapter); ``alpha`` defaults to ``2r``.
    """
    config = LoRAConfig(r=r, alpha=2 * r if alpha is None else alpha, target_modules=target_modules, rslora=rslora)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in select_target_modules(model, config.target_modules):
        layer = model.get_submodule(name)
        a = torch.randn(r, layer.in_features, generator=gen) / layer.in_features**0.5
        b = torch.randn(layer.out_features, r, generator=gen) * b_std
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b
    return tensors, config


def popularity(n_adapters: int, law: str = "uniform", exponent: float = 1.0) -> torch.Tensor:
    """Request probabilities ``[n_adapters]`` (fp64, summing to 1) under ``law`` (see the module docstring)."""
    if isinstance(n_adapters, bool) or not isinstance(n_adapters, numbers.Integral) or n_adapters <= 0:
        raise ValueError(f"n_adapters must be a positive int, got {n_adapters!r}")
    if law not in POPULARITY:
        raise ValueError(f"law must be one of {POPULARITY}, got {law!r}")
    if law == "uniform":
        return torch.full((n_adapters,), 1.0 / n_adapters, dtype=torch.float64)
    weights = torch.arange(1, n_adapters + 1, dtype=torch.float64) ** -float(exponent)
    return weights / weights.sum()


def request_mix(n_requests: int, n_adapters: int, law: str = "uniform", seed: int = 0,
                exponent: float = 1.0) -> list[int]:
    """``n_requests`` adapter ids in ``0..n_adapters-1`` drawn i.i.d. from :func:`popularity` (seeded)."""
    if isinstance(n_requests, bool) or not isinstance(n_requests, numbers.Integral) or n_requests <= 0:
        raise ValueError(f"n_requests must be a positive int, got {n_requests!r}")
    probs = popularity(n_adapters, law, exponent)
    gen = torch.Generator().manual_seed(seed)
    return torch.multinomial(probs, n_requests, replacement=True, generator=gen).tolist()
