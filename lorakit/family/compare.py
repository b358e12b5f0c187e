"""The family comparison of notebook 13: every method on the course task, built, trained and measured the same way.

One place defines the arms (:data:`METHODS`: how each adapts the pretrained TinyLM, and its learning-rate
grid), the training loop (:func:`train_run`: AdamW, or the method's own optimizer for LoRA+ and GaLore, on
seeded minibatches of the Caesar task) and the measurements (trainable parameters, optimizer-state bytes,
held-out metrics). ``scripts/results_family_comparison.py`` runs the full grid (3 learning rates on seed 0,
then 3 seeds at the best) into ``data/results/family_comparison.json``; notebook 13 plots it and re-runs a
slice with the same functions, asserting that the two agree.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lorakit.data import Batch, evaluate, lm_loss
from lorakit.family.adapters import AdapterConfig, apply_adapters
from lorakit.family.bitfit import BitFitConfig, apply_bitfit
from lorakit.family.galore import GaLoreAdamW, galore_param_groups
from lorakit.family.ia3 import IA3Config, apply_ia3
from lorakit.family.ln_tuning import LNTuningConfig, apply_ln_tuning
from lorakit.family.loraplus import loraplus_param_groups
from lorakit.family.prefix_tuning import PrefixTuningConfig, apply_prefix_tuning
from lorakit.family.prompt_tuning import PromptTuningConfig, apply_prompt_tuning
from lorakit.family.vera import VeRAConfig, apply_vera
from lorakit.memory import optimizer_state_bytes
from lorakit.models import load_tiny_lm
from lorakit.peft import LoRAConfig, apply_lora, trainable_parameters
from lorakit.training import seed_everything

__all__ = ["METHODS", "Method", "RunResult", "build", "fastest_interleaved", "make_optimizer", "train_run"]



@dataclass(frozen=True)
class Method:
    """One arm: ``adapt(model) -> model`` (in place or a wrapper), its lr grid, and optionally its optimizer."""

    name: str
    family: str
    adapt: Callable[[nn.Module], nn.Module]
    lrs: tuple[float, ...]
    mergeable: bool
    loraplus_ratio: float | None = None
    galore_rank: int | None = None


def _lora(**kw: object) -> Callable[[nn.Module], nn.Module]:
    return lambda m: apply_lora(m, LoRAConfig(r=kw.get("r", 8), alpha=kw.get("alpha", 16), target_modules="all-linear",
                                              rslora=kw.get("rslora", False), use_dora=kw.get("use_dora", False)))


def _full(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


#: The arms of notebook 13's comparison: the first eleven form the table, the rest back its side claims.
#: Each arm's three learning rates are spaced by ~3x around where a pilot run put its best.
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("LoRA", "additive low-rank", _lora(), (1e-3, 3e-3, 1e-2), True),
    Method("rsLoRA", "additive low-rank", _lora(rslora=True), (3e-4, 1e-3, 3e-3), True),
    Method("DoRA", "additive low-rank", _lora(use_dora=True), (1e-3, 3e-3, 1e-2), True),
    Method("IA3", "additive (multiplicative vectors)", lambda m: apply_ia3(m, IA3Config()), (3e-2, 1e-1, 3e-1), True),
    Method("VeRA", "additive low-rank", lambda m: apply_vera(m, VeRAConfig(r=256, target_modules="all-linear")),
           (3e-2, 1e-1, 3e-1), True),
    Method("LoRA+", "additive low-rank", _lora(), (3e-4, 1e-3, 3e-3), True, loraplus_ratio=16.0),
    Method("BitFit", "selective", lambda m: apply_bitfit(m, BitFitConfig(add_missing_biases=True)),
           (1e-2, 3e-2, 1e-1), True),
    Method("prompt tuning", "soft prompts",
           lambda m: apply_prompt_tuning(m, PromptTuningConfig(8, init="sample_vocab")), (3e-2, 1e-1, 3e-1), False),
    Method("prefix tuning", "soft prompts", lambda m: apply_prefix_tuning(m, PrefixTuningConfig(8)),
           (3e-3, 1e-2, 3e-2), False),
    Method("Houlsby adapters", "additive modules", lambda m: apply_adapters(m, AdapterConfig("houlsby", 32)),
           (1e-3, 3e-3, 1e-2), False),
    Method("full FT", "full fine-tuning", _full, (1e-4, 3e-4, 1e-3), True),
    # side arms
    Method("LoRA+ x4", "additive low-rank", _lora(), (3e-4, 1e-3, 3e-3), True, loraplus_ratio=4.0),
    Method("LoRA r=1", "additive low-rank", _lora(r=1, alpha=2), (1e-3, 3e-3, 1e-2), True),
    Method("LN tuning", "selective", lambda m: apply_ln_tuning(m, LNTuningConfig()), (3e-2, 1e-1, 3e-1), True),
    Method("GaLore r=16", "full (low-rank optimizer)", _full, (1e-3, 3e-3, 1e-2), True, galore_rank=16),
)}
TABLE = ("LoRA", "rsLoRA", "DoRA", "IA3", "VeRA", "LoRA+", "BitFit", "prompt tuning", "prefix tuning",
         "Houlsby adapters", "full FT")


def build(name: str, seed: int = 0, device: torch.device | str = "cpu") -> nn.Module:
    """The pretrained TinyLM adapted by arm ``name`` (seeded, so adapter initialisations are reproducible)."""
    if name not in METHODS:
        raise ValueError(f"name must be one of {sorted(METHODS)}, got {name!r}")
    seed_everything(seed)
    return METHODS[name].adapt(load_tiny_lm(device=device))


def make_optimizer(name: str, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW on the trainable parameters; LoRA+'s groups; or GaLore's Adam for the GaLore arm."""
    method = METHODS[name]
    if method.loraplus_ratio is not None:
        return torch.optim.AdamW(loraplus_param_groups(model, lr, method.loraplus_ratio), lr=lr, weight_decay=0.0)
    if method.galore_rank is not None:
        return GaLoreAdamW(galore_param_groups(model, method.galore_rank, update_proj_gap=50, scale=1.0), lr=lr)
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)


@dataclass
class RunResult:
    """What one (arm, lr, seed) run measured."""

    name: str
    lr: float
    seed: int
    steps: int
    trainable: int
    total: int
    optimizer_state_bytes: int
    eval_steps: list[int]
    exact_match: list[float]
    loss: list[float]
    train_loss_last: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def train_run(name: str, lr: float, seed: int, train_data: Batch, eval_data: Batch, steps: int = 300,
              batch_size: int = 64, eval_every: int = 100, device: torch.device | str = "cpu") -> RunResult:
    """Build arm ``name``, train it ``steps`` steps at ``lr`` on seeded minibatches, evaluate every ``eval_every``."""
    model = build(name, seed, device)
    trainable, total = trainable_parameters(model)
    optimizer = make_optimizer(name, model, lr)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    eval_steps, exact, losses, last = [], [], [], float("nan")
    for step in range(1, steps + 1):
        idx = torch.randint(len(train_data), (min(batch_size, len(train_data)),), generator=generator)
        ids, tgt = train_data.input_ids[idx].to(device), train_data.targets[idx].to(device)
        loss = lm_loss(model(ids), tgt)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        last = loss.item()
        if step % eval_every == 0 or step == steps:
            metrics = evaluate(model, eval_data)
            eval_steps.append(step)
            exact.append(metrics["exact_match"])
            losses.append(metrics["loss"])
            model.train()
    model.eval()
    return RunResult(name, lr, seed, steps, trainable, total, optimizer_state_bytes(optimizer), eval_steps, exact,
                     losses, last)


def fastest_interleaved(fns: dict[str, Callable[[], object]], repeats: int = 50, warmup: int = 5,
                        device: torch.device | str | None = None) -> dict[str, float]:
    """The *fastest* of ``repeats`` interleaved calls of each function, in seconds.

    On a shared machine a call can only be slowed down (pre-emption, cache misses), never sped up, so the
    minimum over rounds estimates the cost of the work itself better than the median when the machine is
    busy (:func:`lorakit.timing.measure_interleaved` reports medians; the rounds are interleaved the same way).
    """
    if not fns:
        raise ValueError("fns must name at least one function")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats <= 0:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
    sync = torch.cuda.synchronize if device is not None and torch.device(device).type == "cuda" else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - start)
    return best
