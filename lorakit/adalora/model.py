"""``apply_adalora``: put :class:`~lorakit.adalora.SVDLinear` layers into a model (notebook 10).

Like :func:`lorakit.apply_lora` it is atomic: every target is checked before the first layer is replaced,
and :func:`lorakit.atomic.unchanged_on_error` puts the model back if anything still fails half-way.
"""

from __future__ import annotations

from torch import nn

from lorakit.adalora.config import AdaLoRAConfig
from lorakit.adalora.layer import SUPPORTED_DTYPES, SVDLinear
from lorakit.atomic import unchanged_on_error
from lorakit.peft import check_model, refuse_adapted_model, select_target_modules, set_submodule

__all__ = ["apply_adalora"]


def apply_adalora(model: nn.Module, config: AdaLoRAConfig) -> nn.Module:
    """Replace the targeted ``nn.Linear`` layers by :class:`SVDLinear` (rank ``init_r``), in place.

    Every other parameter is frozen. The config is stored as ``model.adalora_config`` (for
    :meth:`RankAllocator.from_config`). Raises ValueError, leaving the model unchanged, when nothing
    matches, a target is not a floating-point ``nn.Linear``, the model already has adapters, or the config
    carries a ``rank_pattern`` (that describes a trained adapter: use :func:`lorakit.load_adapter`).
    """
    check_model(model)
    if not isinstance(config, AdaLoRAConfig):
        raise TypeError(f"config must be an AdaLoRAConfig, got {type(config).__name__}")
    if config.rank_pattern is not None:
        raise ValueError(
            "config.rank_pattern is set: it describes the pruned ranks of a trained adapter, and apply_adalora "
            "builds fresh layers at rank init_r. Load the adapter with lorakit.load_adapter, or use "
            "dataclasses.replace(config, rank_pattern=None) to train a new one"
        )
    refuse_adapted_model(model, "apply_adalora")
    names = select_target_modules(model, config.target_modules)
    odd = {n: model.get_submodule(n).weight.dtype for n in names
           if model.get_submodule(n).weight.dtype not in SUPPORTED_DTYPES}
    if odd:
        raise ValueError(f"apply_adalora adapts floating-point layers only; these targets are not: {odd}")
    with unchanged_on_error(model):
        for p in model.parameters():
            p.requires_grad_(False)
        for name in names:
            layer = SVDLinear(model.get_submodule(name), config.init_r, config.alpha, config.dropout)
            set_submodule(model, name, layer)
        model.adalora_config = config  # type: ignore[assignment]
    return model
