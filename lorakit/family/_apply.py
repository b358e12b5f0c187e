"""The model-level pattern every family ``apply_*`` follows (the same conventions as ``apply_lora``).

1. check the arguments and the model (``check_model``; a model that carries adapters of any kind is refused,
   :func:`lorakit.peft.refuse_adapted_model`: lorakit never stacks adapters);
2. select the targets (:func:`lorakit.peft.select_target_modules`, PEFT's matching rules);
3. inside :func:`lorakit.atomic.unchanged_on_error`: freeze every parameter, build and insert the new layers,
   store the config on the model as ``model.peft_config_lorakit`` (what ``save_family_adapter`` reads).

So a failing call leaves the model exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

from lorakit.atomic import unchanged_on_error
from lorakit.peft import check_model, refuse_adapted_model, set_submodule

__all__ = ["CONFIG_ATTR", "adapt_modules", "family_config", "layers_of", "refuse_family_model"]

#: Attribute under which a family method stores its config on the model (tests/snapshot.py watches it).
CONFIG_ATTR = "peft_config_lorakit"

L = TypeVar("L", bound=nn.Module)


def refuse_family_model(model: nn.Module, function: str) -> None:
    """ValueError if ``model`` carries adapter layers, or a family config (BitFit adds no layers, but counts)."""
    refuse_adapted_model(model, function)
    existing = getattr(model, CONFIG_ATTR, None)
    if existing is not None:
        raise ValueError(f"model is already adapted by {type(existing).__name__}; {function} would stack a second "
                         "method on it")


def adapt_modules(model: nn.Module, names: list[str], build: Callable[[str, nn.Module], nn.Module],
                  config: object) -> nn.Module:
    """Freeze ``model``, replace each ``names[i]`` by ``build(name, module)``, store ``config``; atomic."""
    with unchanged_on_error(model):
        for p in model.parameters():
            p.requires_grad_(False)
        new = {name: build(name, model.get_submodule(name)) for name in names}
        for name, layer in new.items():
            set_submodule(model, name, layer)
        setattr(model, CONFIG_ATTR, config)
    return model


def layers_of(model: nn.Module, cls: type[L]) -> dict[str, L]:
    """``{name: layer}`` for every ``cls`` layer in ``model``."""
    check_model(model)
    return {name: m for name, m in model.named_modules() if isinstance(m, cls)}


def family_config(model: nn.Module, cls: type | tuple[type, ...] | None = None) -> object:
    """The config a family ``apply_*`` stored on ``model``; ValueError when there is none (or another kind)."""
    check_model(model)
    config = getattr(model, CONFIG_ATTR, None)
    if config is None or (cls is not None and not isinstance(config, cls)):
        want = "a family method" if cls is None else getattr(cls, "__name__", str(cls))
        raise ValueError(f"model carries no {want} config (was it made by the matching lorakit.family.apply_*?)")
    return config
