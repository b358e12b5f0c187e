"""The model-level LoRA API, PEFT-like (notebooks 01-04): apply, count, merge, unmerge, unload.

``apply_lora(model, LoRAConfig(...))`` replaces every targeted ``nn.Linear`` by a
:class:`~lorakit.lora.LoRALinear` (or :class:`~lorakit.dora.DoRALinear` with ``use_dora=True``) and
freezes everything else. Every function here is atomic: when it raises, the model is left exactly as it
was (:mod:`lorakit.atomic`); it validates what it can first, so that it never writes half its weights.
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.atomic import unchanged_on_error
from lorakit.dora import DoRALinear
from lorakit.layers import AdapterLayer, adapter_layers
from lorakit.lora import LoRALinear
from lorakit.nf4 import QuantizedTensor
from lorakit.peft.config import LoRAConfig
from lorakit.peft.targets import check_model, select_target_modules, set_submodule

__all__ = [
    "apply_lora", "lora_layers", "merge_and_unload", "merge_lora", "mergeable_layers", "refuse_adapted_model",
    "trainable_parameters", "unmerge_lora",
]


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """``{module name: LoRALinear}`` for every LoRA layer in ``model`` (DoRA and QLoRA layers included)."""
    check_model(model)
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, LoRALinear)}


def refuse_adapted_model(model: nn.Module, function: str) -> None:
    """ValueError naming the existing adapter layers: every ``apply_*`` adapts a model once (no stacking)."""
    check_model(model)
    existing = adapter_layers(model)
    if existing:
        kinds = sorted({getattr(m, "adapter_kind", type(m).__name__) for m in existing.values()})
        names = list(existing)
        raise ValueError(
            f"model already has adapter layers ({'/'.join(kinds)}: {names[:4]}{' ...' if len(names) > 4 else ''}); "
            f"{function} would stack a second adapter on them. Use load_adapter to swap weights, or "
            "merge_and_unload first"
        )


def apply_lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Replace the targeted ``nn.Linear`` layers of ``model`` by LoRALinear, in place; return ``model``.

    Every other parameter is frozen (PEFT's ``bias="none"``). Raises ValueError, leaving the model
    unchanged, when nothing matches (the message lists the Linear layers that exist), when a target is not
    an ``nn.Linear``, or when the model already carries adapters of any kind.
    """
    check_model(model)
    if not isinstance(config, LoRAConfig):
        raise TypeError(f"config must be a LoRAConfig, got {type(config).__name__}")
    refuse_adapted_model(model, "apply_lora")
    names = select_target_modules(model, config.target_modules)
    if config.init == "pissa":  # PiSSA's errors, for every target before the first one is built
        too_small = [n for n in names if config.r > min(model.get_submodule(n).weight.shape)]
        if too_small:
            raise ValueError(f"init='pissa' needs r={config.r} <= min(in, out) for every target; not for {too_small}")
        not_finite = [n for n in names if not bool(torch.isfinite(model.get_submodule(n).weight).all())]
        if not_finite:
            raise ValueError(f"init='pissa' needs finite base weights (an SVD of NaN/inf is undefined); {not_finite} "
                             "hold NaN or inf")
    if config.use_dora:  # DoRALinear's only other error (a zero row has no direction): check all first
        zero = [n for n in names if (model.get_submodule(n).weight.detach().norm(dim=1) == 0).any()]
        if zero:
            raise ValueError(f"use_dora=True needs nonzero weight rows (DoRA normalises each row); zero rows in {zero}")
    layer_cls = DoRALinear if config.use_dora else LoRALinear
    with unchanged_on_error(model):
        for p in model.parameters():
            p.requires_grad_(False)
        for name in names:
            base = model.get_submodule(name)
            set_submodule(model, name, layer_cls(base, config.r, config.alpha, config.dropout, config.rslora,
                                                 config.init))
        model.lora_config = config  # type: ignore[assignment]
    return model


def _weight_count(p: torch.Tensor) -> int:
    """Model weights a parameter holds: bitsandbytes' ``Params4bit`` packs two per byte (its numel is bytes)."""
    quant_state = getattr(p, "quant_state", None)
    shape = getattr(quant_state, "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else p.numel()


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` counts of model weights (each parameter tensor counted once).

    A 4-bit base (notebook 08) counts as the weights it stores, not its bytes: ``total`` is the same for a
    model and its QLoRA version. That covers lorakit's ``NF4Linear`` (its ``quantized`` weight) and
    bitsandbytes' ``Params4bit`` (whose ``numel()`` is the packed byte count).
    """
    check_model(model)
    params = {id(p): p for p in model.parameters()}
    quantized = {}
    for m in model.modules():
        q = getattr(m, "quantized", None)
        if isinstance(q, QuantizedTensor):
            quantized[id(q)] = q
            for t in getattr(m, "quantized_parameters", lambda: ())():  # packed storage registered as parameters
                params.pop(id(t), None)
    frozen_4bit = sum(q.numel for q in quantized.values())
    return (sum(p.numel() for p in params.values() if p.requires_grad),
            sum(_weight_count(p) for p in params.values()) + frozen_4bit)


def mergeable_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """The adapter layers of ``model``, each checked to be mergeable; ValueError names any that is not."""
    check_model(model)
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("model has no adapter layers to merge")
    not_mergeable = [n for n, m in layers.items() if not callable(getattr(m, "merge", None))]
    if not_mergeable:
        kinds = sorted({getattr(layers[n], "adapter_kind", type(layers[n]).__name__) for n in not_mergeable})
        raise ValueError(f"{'/'.join(kinds)} layers cannot be merged into the base weight: {not_mergeable[:4]}")
    return layers


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every adapter layer (LoRA, DoRA, QLoRA, AdaLoRA, ...) into its base; idempotent per layer.

    Every layer is checked first (``check_merge``), so a layer that cannot merge (a DoRA row with zero
    magnitude, NaN adapters) raises before any weight is written.
    """
    layers = mergeable_layers(model)
    todo = {n: m for n, m in layers.items() if not m.merged}
    for layer in todo.values():
        check = getattr(layer, "check_merge", None)
        if check is not None:
            check()
    for layer in todo.values():  # no rollback wrapper: a flag restored over a written weight would lie
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora` on every merged adapter layer."""
    for layer in mergeable_layers(model).values():
        if layer.merged:
            layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge, then replace every adapter layer by its merged base module: a plain model (PEFT's name).

    A merged QLoRA layer becomes a dense layer in the dtype of the weight it quantized (see
    :meth:`lorakit.qlora.QLoRALinear.merge`).
    """
    layers = mergeable_layers(model)
    merge_lora(model)
    with unchanged_on_error(model):
        for name, layer in layers.items():
            set_submodule(model, name, layer.base)
        for attr in ("lora_config", "adalora_config"):
            if hasattr(model, attr):
                delattr(model, attr)
    return model
