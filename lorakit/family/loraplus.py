"""LoRA+: a larger learning rate for B than for A (notebook 13, section 5; Hayou et al. 2024, arXiv:2402.12354).

LoRA+ changes nothing in the model, only the optimizer: ``lr_B = ratio * lr_A``. Hayou et al. argue from
the infinite-width limit that with one shared learning rate either ``A`` learns too slowly or ``B``
blows up, and that ``B`` should move faster (they suggest ratios around 16 and report up to ~2x faster
training and 1-2 % better accuracy on their benchmarks).

:func:`loraplus_param_groups` builds the same four parameter groups as Hugging Face PEFT's
``peft.optimizers.create_loraplus_optimizer``, in the same order (``tests/test_family_peft_crosscheck.py``
compares them parameter by parameter):

1. ``groupA``: every other trainable parameter (LoRA's ``A``), ``lr``, ``weight_decay``;
2. ``embedding``: LoRA layers on embeddings (lorakit has none, so this group is empty), ``lr_embedding``;
3. ``groupB``: parameters named ``lora_B`` *and every 1-D parameter* (DoRA's magnitude, biases, norm weights),
   ``lr * ratio``, ``weight_decay``, except
4. ``groupB_no_decay``: those of 3 that are biases or sit in an ``nn.LayerNorm``, ``lr * ratio``, no decay.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lorakit.family.config import check_real
from lorakit.peft import check_model

__all__ = ["create_loraplus_optimizer", "loraplus_param_groups"]


def _decay_names(model: nn.Module) -> set[str]:
    """Names of parameters outside every ``nn.LayerNorm`` and not named like a bias (transformers' rule)."""
    in_layernorm = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    return {n for n, p in model.named_parameters() if id(p) not in in_layernorm and "bias" not in n}


def loraplus_param_groups(model: nn.Module, lr: float, loraplus_lr_ratio: float, loraplus_weight_decay: float = 0.0,
                          loraplus_lr_embedding: float = 1e-6) -> list[dict]:
    """PEFT's four LoRA+ parameter groups for ``model``'s trainable parameters (module docstring).

    Each group is ``{"params": [...], "lr": ..., "weight_decay": ..., "names": [...]}``; the names are for
    reading (torch optimizers keep extra keys).
    """
    check_model(model)
    lr = check_real("lr", lr, 0.0, low_open=True)
    ratio = check_real("loraplus_lr_ratio", loraplus_lr_ratio, 0.0, low_open=True)
    wd = check_real("loraplus_weight_decay", loraplus_weight_decay, 0.0)
    lr_embedding = check_real("loraplus_lr_embedding", loraplus_lr_embedding, 0.0, low_open=True)
    decay = _decay_names(model)
    groups: dict[str, dict[str, nn.Parameter]] = {"A": {}, "embedding": {}, "B": {}, "B_no_decay": {}}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "lora_B" in name or param.ndim == 1:
            groups["B" if name in decay else "B_no_decay"][name] = param
        else:
            groups["A"][name] = param
    if not any(groups.values()):
        raise ValueError("model has no trainable parameters (apply an adapter first)")
    spec = (("A", lr, wd), ("embedding", lr_embedding, wd), ("B", lr * ratio, wd), ("B_no_decay", lr * ratio, 0.0))
    return [{"params": list(groups[key].values()), "names": list(groups[key]), "lr": group_lr, "weight_decay": decay_}
            for key, group_lr, decay_ in spec]


def create_loraplus_optimizer(model: nn.Module, optimizer_cls: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
                              *, lr: float, loraplus_lr_ratio: float, **kwargs: object) -> torch.optim.Optimizer:
    """``optimizer_cls(loraplus_param_groups(...), lr=lr, **kwargs)``; PEFT's signature and keyword names.

    ``loraplus_weight_decay`` and ``loraplus_lr_embedding`` are taken from ``kwargs`` (as PEFT does); the
    rest goes to the optimizer.
    """
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
        raise TypeError(f"optimizer_cls must be a torch.optim.Optimizer subclass, got {optimizer_cls!r}")
    wd = kwargs.pop("loraplus_weight_decay", 0.0)
    lr_embedding = kwargs.pop("loraplus_lr_embedding", 1e-6)
    groups = loraplus_param_groups(model, lr, loraplus_lr_ratio, wd, lr_embedding)
    return optimizer_cls(groups, lr=lr, **kwargs)
