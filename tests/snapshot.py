"""``snapshot(model)`` / ``assert_unchanged(model, before)``: a failing call must leave the model as it was.

The snapshot holds everything a user could observe: every parameter and buffer (values, dtype, device,
``requires_grad``, persistent or not), every module's name, type and identity, every quantized base
(lorakit's ``QuantizedTensor`` attributes, packed bytes and absmax), the adapter layers' hyper-parameters
(``r``, ``alpha``, ``scaling``, ``merged``, ...) and the configs stored on the model.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

_HYPER = ("r", "alpha", "scaling", "dropout", "rslora", "merged", "init", "training", "compute_dtype", "backend")
_CONFIGS = ("lora_config", "adalora_config", "peft_config_lorakit")


def _tensors_of(value: object) -> list[torch.Tensor]:
    """The tensors inside a quantized weight (QuantizedTensor and its double-quantized absmax)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: list[torch.Tensor] = []
        for f in dataclasses.fields(value):
            out += _tensors_of(getattr(value, f.name))
        return out
    return []


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality (NaN equals NaN with the same bits, -0.0 differs from +0.0)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.contiguous().view(width), b.contiguous().view(width))
    return torch.equal(a, b)


def snapshot(model: nn.Module) -> dict:
    """Everything observable about ``model``, cloned."""
    state = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        state[f"param:{name}"] = (p.detach().clone(), p.dtype, p.device, p.requires_grad)
    for name, b in model.named_buffers(remove_duplicate=False):
        state[f"buffer:{name}"] = (b.detach().clone(), b.dtype, b.device, None)
    quantized = {}
    hyper = {}
    for name, m in model.named_modules():
        q = getattr(m, "quantized", None)
        if q is not None:
            quantized[name] = [t.detach().clone() for t in _tensors_of(q)]
        hyper[name] = tuple(repr(getattr(m, h, None)) for h in _HYPER)
    return {
        "state": state,
        "modules": [(n, type(m), id(m)) for n, m in model.named_modules()],
        "quantized": quantized,
        "hyper": hyper,
        "configs": {c: repr(getattr(model, c, None)) for c in _CONFIGS},
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    """AssertionError naming the first difference between ``model`` now and the ``before`` snapshot."""
    after = snapshot(model)
    assert after["modules"] == before["modules"], "module structure changed"
    assert after["configs"] == before["configs"], "stored configs changed"
    assert after["hyper"] == before["hyper"], "adapter hyper-parameters or flags changed"
    assert after["state"].keys() == before["state"].keys(), "parameters or buffers were added or removed"
    for key, (value, dtype, device, grad) in before["state"].items():
        v2, d2, dev2, g2 = after["state"][key]
        assert (d2, dev2, g2) == (dtype, device, grad), f"{key}: dtype/device/requires_grad changed"
        assert same(v2, value), f"{key}: values changed"
    assert after["quantized"].keys() == before["quantized"].keys(), "quantized bases changed"
    for key, tensors in before["quantized"].items():
        assert len(tensors) == len(after["quantized"][key]), f"{key}: quantized storage changed"
        for t1, t2 in zip(tensors, after["quantized"][key], strict=True):
            assert same(t1, t2), f"{key}: quantized bytes changed"
