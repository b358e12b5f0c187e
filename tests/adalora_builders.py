"""Builders shared by the AdaLoRA test files (this module holds no tests): trained, pruned AdaLoRA adapters
made by PEFT and by lorakit on the two test models, and the PEFT <-> lorakit name mapping.

Every adapter starts from random non-zero factors (``A``, ``B`` ~ N(0, 0.1²), ``Λ`` ~ N(0, 1)), so that it
moves the outputs well above the comparison tolerance, then takes a few optimizer steps with the allocator,
ending in the final phase: ranks are pruned and the pruned ``Λ_i`` are exactly zero.
"""

from __future__ import annotations

import copy

import torch
from builders import logits, tiny_llama, tiny_lm
from torch import nn

from lorakit.adalora import AdaLoRAConfig, RankAllocator, adalora_layers, apply_adalora, orthogonal_regularization

PREFIX = "base_model.model."
ADAPTER = "default"
BUILDS = {"llama": tiny_llama, "tinylm": tiny_lm}
VOCAB = {"llama": 64, "tinylm": 32}
QV = ["q_proj", "v_proj"]
ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: 6 steps: warm-up until 1, masking at 2 and 3, the final allocation at 4, the frozen mask after.
SCHEDULE = {"init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 2, "deltaT": 1, "total_step": 6, "alpha": 4.0,
            "orth_reg_weight": 0.3}


def config(targets: list[str] | str = QV, **kw) -> AdaLoRAConfig:
    return AdaLoRAConfig(**{**SCHEDULE, "target_modules": targets, **kw})


def ids_for(kind: str, seed: int = 1, shape: tuple[int, int] = (2, 7)) -> torch.Tensor:
    return torch.randint(0, VOCAB[kind], shape, generator=torch.Generator().manual_seed(seed))


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b|`` relative to the output scale (``max(1, max |b|)``)."""
    return ((a.float() - b.float()).abs().max() / max(1.0, b.float().abs().max().item())).item()


def peft_layers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.adalora import SVDLinear as PeftSVDLinear

    return {n.removeprefix(PREFIX): m for n, m in model.named_modules() if isinstance(m, PeftSVDLinear)}


def _random_factors(shapes: dict[str, tuple[int, ...]], gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {k: torch.randn(s, generator=gen) * (1.0 if k == "lora_E" else 0.1) for k, s in shapes.items()}


def randomize_lorakit(model: nn.Module, seed: int = 3) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in sorted(adalora_layers(model).items()):
            values = _random_factors({k: getattr(layer, k).shape for k in ("lora_A", "lora_E", "lora_B")}, gen)
            for k, v in values.items():
                getattr(layer, k).copy_(v)


def randomize_peft(model: nn.Module, seed: int = 3) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in sorted(peft_layers(model).items()):
            params = {k: getattr(layer, k)[ADAPTER] for k in ("lora_A", "lora_E", "lora_B")}
            for k, v in _random_factors({k: p.shape for k, p in params.items()}, gen).items():
                params[k].copy_(v)


def train_peft(kind: str, seed: int = 3, targets: list[str] | str = QV, **kw) -> nn.Module:
    """A PEFT AdaLoRA model on ``BUILDS[kind]()``, trained through all three phases (ranks pruned), eval mode."""
    from peft import AdaLoraConfig, get_peft_model

    cfg = config(targets, **kw)
    model = get_peft_model(BUILDS[kind](), AdaLoraConfig(**cfg.to_peft_dict()))
    randomize_peft(model, seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(cfg.total_step):
        ids = torch.randint(0, VOCAB[kind], (2, 6), generator=gen)
        logits(model, ids).square().mean().backward()
        opt.step()
        model.base_model.update_and_allocate(step)
        opt.zero_grad()
    return model.eval()


def train_lorakit(kind: str, seed: int = 3, targets: list[str] | str = QV, base: nn.Module | None = None,
                  **kw) -> nn.Module:
    """A lorakit AdaLoRA model trained with its RankAllocator through all three phases, eval mode."""
    cfg = config(targets, **kw)
    model = apply_adalora(copy.deepcopy(base) if base is not None else BUILDS[kind](), cfg)
    randomize_lorakit(model, seed)
    allocator = RankAllocator.from_config(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    model.train()
    for step in range(1, cfg.total_step + 1):
        ids = torch.randint(0, VOCAB[kind], (2, 6), generator=gen).to(device)
        (logits(model, ids).square().mean() + cfg.orth_reg_weight * orthogonal_regularization(model)).backward()
        opt.step()
        allocator.update_and_allocate(model, step)
        opt.zero_grad()
    return model.eval()
