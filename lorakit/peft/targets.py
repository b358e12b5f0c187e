"""Which layers a config adapts: PEFT's ``target_modules`` rules, and the no-stacking rule (notebook 01).

``target_modules`` is one of

* a list (or tuple, or set) of module-name suffixes: ``"q_proj"`` matches ``layers.0.self_attn.q_proj``
  (the whole last parts of the name, as PEFT: ``name == t`` or ``name.endswith("." + t)``);
* a regular expression string, matched against the full module name with ``re.fullmatch`` (as PEFT);
* ``"all-linear"``: every ``nn.Linear`` except the output head ``lm_head``.

A name that matches a module of another kind (``"LayerNorm"``, a whole attention block) is an error, as
in PEFT ("target module ... is not supported"), and so is a match inside a layer that already carries an
adapter of any kind (:mod:`lorakit.layers`): lorakit never stacks adapters.
"""

from __future__ import annotations

import re
from collections.abc import Sequence, Set

from torch import nn

from lorakit.layers import adapted_owner, adapter_layers

__all__ = [
    "ALL_LINEAR", "check_model", "check_target_modules", "find_target_modules", "select_target_modules",
    "set_submodule",
]

ALL_LINEAR = "all-linear"


def check_model(model: object) -> None:
    """TypeError unless ``model`` is an ``nn.Module`` (every model-level function starts with this)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")


def check_target_modules(targets: object, name: str = "target_modules") -> list[str] | str:
    """A config's ``target_modules``, validated: a regex string as is; a list, tuple or set as a list.

    A set is sorted, so the saved ``adapter_config.json`` does not depend on hash order.
    """
    if isinstance(targets, str):
        if not targets:
            raise ValueError(f"{name} must not be an empty string")
        try:
            re.compile(targets)
        except re.error as err:
            raise ValueError(f"{name} is not a valid regex: {targets!r} ({err})") from None
        return targets
    if isinstance(targets, Set):
        targets = sorted(targets, key=str)
    if not (isinstance(targets, Sequence) and targets and all(isinstance(t, str) and t for t in targets)):
        raise TypeError(f"{name} must be a non-empty list of names or a regex string, got {targets!r}")
    return list(targets)


def _name_matches(name: str, targets: list[str] | str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def _kind_names(kinds: tuple[type[nn.Module], ...]) -> str:
    return " or ".join(f"nn.{k.__name__}" if k.__module__.startswith("torch.nn") else k.__name__ for k in kinds)


def find_target_modules(
    model: nn.Module,
    target_modules: Sequence[str] | Set[str] | str,
    kinds: tuple[type[nn.Module], ...] = (nn.Linear,),
) -> list[str]:
    """Names of the modules of type ``kinds`` that ``target_modules`` selects (PEFT's matching rules).

    Raises ValueError when a selected name belongs to a layer that already carries an adapter (naming
    that layer), and when a name or regex matches a module that is not one of ``kinds`` (naming it).
    """
    check_model(model)
    targets = check_target_modules(target_modules)
    owners = adapter_layers(model)
    kind_names = _kind_names(kinds)
    found = []
    for name, module in model.named_modules():
        if not name:
            continue
        if targets == ALL_LINEAR:
            selected = isinstance(module, nn.Linear) and name.split(".")[-1] != "lm_head"
        else:
            selected = _name_matches(name, targets)
        if not selected:
            continue
        owner = adapted_owner(name, owners)
        if owner is not None:
            kind = getattr(owners[owner], "adapter_kind", type(owners[owner]).__name__)
            raise ValueError(
                f"target_modules={target_modules!r} selects {name!r}, but layer {owner!r} already carries a "
                f"{kind} adapter ({type(owners[owner]).__name__}); lorakit does not stack adapters (merge_and_unload "
                "it first, or load_adapter to swap weights)"
            )
        if not isinstance(module, kinds):
            raise ValueError(
                f"target_modules={target_modules!r} matches {name!r}, a {type(module).__name__}, but only "
                f"{kind_names} layers can be adapted here (PEFT refuses this target too)"
            )
        found.append(name)
    return found


def select_target_modules(
    model: nn.Module,
    target_modules: Sequence[str] | Set[str] | str,
    kinds: tuple[type[nn.Module], ...] = (nn.Linear,),
) -> list[str]:
    """:func:`find_target_modules`, raising ValueError (listing the candidate layers) when nothing matches."""
    names = find_target_modules(model, target_modules, kinds)
    if not names:
        candidates = [n for n, m in model.named_modules() if isinstance(m, kinds)]
        kind_names = _kind_names(kinds)
        raise ValueError(
            f"target_modules={target_modules!r} matched no {kind_names} in the model; its "
            f"{kind_names.removeprefix('nn.')} layers are: {candidates}"
        )
    return names


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the existing submodule ``name`` (a dotted path) of ``model`` by ``new``."""
    check_model(model)
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty dotted module path, got {name!r}")
    if not isinstance(new, nn.Module):
        raise TypeError(f"new must be an nn.Module, got {type(new).__name__}")
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError:
        parent = None
    if parent is None or not isinstance(getattr(parent, child, None), nn.Module):
        raise ValueError(f"name={name!r} is not a submodule of the model")
    setattr(parent, child, new)
