"""DoRA merges (issue 9, items 8 and 9): checked on every layer first, and rounded once in bf16/fp16.

* ``merge_lora`` on a model whose LAST DoRA layer cannot merge (a zero or NaN magnitude, NaN factors)
  raises before any layer is merged: the model is exactly as it was (``tests/snapshot.py``).
* On a half-precision base ``W' = f (W0 + s B A)`` is formed in fp32 and rounded once, and equals
  PEFT's merged weight bit for bit.
"""

from __future__ import annotations

import copy

import pytest
import torch
from builders import tiny_lm
from snapshot import assert_unchanged, snapshot
from torch import nn

import lorakit
from lorakit.dora import DoRALinear

ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def trained_dora(model: nn.Module, seed: int = 2) -> nn.Module:
    model = lorakit.apply_lora(model, lorakit.LoRAConfig(r=4, alpha=8, target_modules=ALL7, use_dora=True))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lorakit.lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.2)
            layer.magnitude.mul_(1 + 0.2 * torch.randn(layer.magnitude.shape, generator=gen))
    return model


def _zero_magnitude(layer: DoRALinear) -> None:
    layer.magnitude[1] = 0.0


def _nan_magnitude(layer: DoRALinear) -> None:
    layer.magnitude[0] = float("nan")


def _inf_magnitude(layer: DoRALinear) -> None:
    layer.magnitude[3] = float("inf")


def _nan_b(layer: DoRALinear) -> None:
    layer.lora_B[0, 0] = float("nan")


def _inf_a(layer: DoRALinear) -> None:
    layer.lora_A[0, 0] = float("inf")


@pytest.mark.parametrize(
    ("spoil", "match"),
    [
        (_zero_magnitude, r"zero or non-finite in rows \[1\]: the merge could not be undone"),
        (_nan_magnitude, "magnitude holds NaN or inf"),
        (_inf_magnitude, "magnitude holds NaN or inf"),
        (_nan_b, "lora_A/lora_B hold NaN or inf"),
        (_inf_a, "lora_A/lora_B hold NaN or inf"),
    ],
    ids=["zero-magnitude", "nan-magnitude", "inf-magnitude", "nan-B", "inf-A"],
)
@pytest.mark.parametrize("function", ["merge_lora", "merge_and_unload"])
def test_a_bad_last_layer_fails_the_merge_before_any_layer_is_merged(spoil, match, function):
    model = trained_dora(tiny_lm())
    with torch.no_grad():
        spoil(list(lorakit.lora_layers(model).values())[-1])
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        getattr(lorakit, function)(model)
    assert_unchanged(model, before)
    assert not any(layer.merged for layer in lorakit.lora_layers(model).values())


def test_a_partly_merged_model_merges_the_rest_and_unmerges_all():
    model = trained_dora(tiny_lm())
    ids = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids)
        first = list(lorakit.lora_layers(model).values())[0]
        first.merge()
        lorakit.merge_lora(model)
        assert all(layer.merged for layer in lorakit.lora_layers(model).values())
        torch.testing.assert_close(model(ids), want, rtol=1e-5, atol=1e-5)
        lorakit.unmerge_lora(model)
        torch.testing.assert_close(model(ids), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_merge_rounds_once_and_equals_peft(dtype):
    peft = pytest.importorskip("peft")
    from builders import peft_layers

    base = tiny_lm().to(dtype)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=ALL7,
                                                                       use_dora=True))
    ours = trained_dora(base)
    with torch.no_grad():
        for name, layer in lorakit.lora_layers(ours).items():
            peft_layer = peft_layers(theirs)[name]
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
            peft_layer.lora_magnitude_vector["default"].weight.copy_(layer.magnitude)
    layers = lorakit.lora_layers(ours)
    exact, double = {}, {}
    with torch.no_grad():
        for name, layer in layers.items():
            W0, BA = layer.base.weight, layer.scaling * (layer.lora_B @ layer.lora_A)
            V = W0.float() + BA
            factor = layer.magnitude / torch.linalg.norm(V, dim=1)
            exact[name] = (factor[:, None] * V).to(dtype)  # one rounding
            double[name] = (factor[:, None] * (W0 + BA.to(dtype)).float()).to(dtype)  # ΔW rounded first
    lorakit.merge_lora(ours)
    theirs.base_model.merge_adapter()
    differ = total = 0
    for name, layer in layers.items():
        assert layer.base.weight.dtype == dtype
        assert torch.equal(layer.base.weight, exact[name]), name
        assert torch.equal(layer.base.weight, peft_layers(theirs)[name].get_base_layer().weight), name
        differ += int((double[name] != exact[name]).sum())
        total += exact[name].numel()
    assert differ / total > 0.01  # rounding the update first would have changed that many weights


def test_merge_keeps_the_weight_dtype_and_device():
    layer = DoRALinear(nn.Linear(8, 6).to(torch.bfloat16), r=2, alpha=4)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.3)
    layer.merge()
    assert layer.base.weight.dtype == torch.bfloat16 and layer._merge_factor.dtype == torch.float32
    layer.unmerge()
    assert layer.base.weight.dtype == torch.bfloat16 and not layer.merged
