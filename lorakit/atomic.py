"""A failing call leaves the model exactly as it was: the safety net under every model-level function.

lorakit's model-level functions (``apply_lora``, ``apply_qlora``, ``merge_lora``, ``load_adapter``, ...)
first validate everything they can, then change the model. Some errors can only show up half-way (a
NaN weight in the last of 40 targets, a zero row met while merging). :func:`unchanged_on_error` makes
those cases atomic too: on an exception it puts back, for every module of the model, its attribute
dictionary (child modules, parameter and buffer slots, flags such as ``merged`` or ``training``, the
stored ``lora_config``) and every parameter's ``requires_grad`` flag, then re-raises.

What it cannot undo is an in-place change of a tensor's *values*; functions that write into weights
(merging, PiSSA's residual) therefore compute and check every new value before writing the first one.
``tests/snapshot.py`` checks both halves: values, flags and structure are equal after every failing call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["unchanged_on_error"]


def _copy_attributes(module: nn.Module) -> dict:
    # shallow copies of the containers (setattr mutates _modules/_parameters/_buffers in place)
    return {k: (v.copy() if isinstance(v, (dict, set, list)) else v) for k, v in module.__dict__.items()}


@contextmanager
def unchanged_on_error(model: nn.Module) -> Iterator[None]:
    """Context manager: if the body raises, restore ``model``'s structure, attributes and grad flags."""
    modules = list(model.modules())
    saved = [(m, _copy_attributes(m)) for m in modules]
    flags = [(p, p.requires_grad) for m in modules for p in m._parameters.values() if p is not None]
    try:
        yield
    except BaseException:
        for module, attributes in saved:
            module.__dict__.clear()
            module.__dict__.update(attributes)
        for p, flag in flags:
            p.requires_grad_(flag)
        raise
