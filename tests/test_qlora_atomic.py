"""Failing QLoRA calls leave the model exactly as it was (issue 9, items 5 and 8).

Each case snapshots everything observable (tests/snapshot.py: parameters, buffers, ``requires_grad`` flags,
module structure and identity, quantized bytes, hyper-parameters, stored configs), makes the call fail, and
checks the snapshot. The no-stacking rule is tested for a regex ``apply_qlora`` on models carrying every
other adapter kind, and for adapters put on top of a QLoRA model.
"""

from __future__ import annotations

import pytest
import torch
from builders import tiny_lm
from snapshot import assert_unchanged, snapshot
from torch import nn

import lorakit
from lorakit.peft import LoRAConfig, find_target_modules, lora_layers
from lorakit.qlora import QLoRALinear, apply_qlora, merge_qlora

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]

BACKENDS = ["lorakit", "bitsandbytes"]
ALL = LoRAConfig(r=4, alpha=8, target_modules="all-linear")
REGEX = LoRAConfig(r=4, alpha=8, target_modules=r".*\.(q|k|v)_proj")


def with_bad_last_weight(value: float) -> nn.Module:
    model = tiny_lm()
    with torch.no_grad():
        model.layers[1].mlp.down_proj.weight[3, 5] = value  # the last target of "all-linear"
    return model


# --------------------------------------------------------------------------- item 8: apply_qlora
@pytest.mark.parametrize("blocksize", [63, 100, 16, 8192])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bad_blocksize_leaves_the_model_unchanged(backend, blocksize):
    model = tiny_lm()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"blocksize must be a power of two in \[32, 4096\]"):
        apply_qlora(model, ALL, blocksize=blocksize, backend=backend)
    assert_unchanged(model, before)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_non_finite_weight_in_the_last_target_leaves_the_model_unchanged(backend, value):
    model = with_bad_last_weight(value)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"needs finite weights.*layers\.1\.mlp\.down_proj"):
        apply_qlora(model, ALL, blocksize=32, backend=backend)
    assert_unchanged(model, before)
    assert all(p.requires_grad for p in model.parameters()), "no layer was frozen on the way"


def test_a_float64_target_leaves_the_model_unchanged():
    model = tiny_lm()
    model.layers[1].mlp.down_proj.double()
    before = snapshot(model)
    with pytest.raises(TypeError, match=r"fp32, bf16 or fp16.*layers\.1\.mlp\.down_proj \(torch\.float64\)"):
        apply_qlora(model, ALL, blocksize=32)
    assert_unchanged(model, before)


def test_pissa_rank_too_big_for_a_later_target_leaves_the_model_unchanged():
    model = tiny_lm()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"init='pissa' needs r=48 <= min\(in, out\)"):
        apply_qlora(model, LoRAConfig(r=48, target_modules=["q_proj", "up_proj"], init="pissa"), blocksize=32)
    assert_unchanged(model, before)


@pytest.mark.parametrize(("kwargs", "exc"), [
    ({"compute_dtype": torch.float64}, ValueError), ({"adapter_dtype": "fp32"}, TypeError),
    ({"backend": "gptq"}, ValueError), ({"double_quant": "yes"}, TypeError),
])
def test_bad_arguments_leave_the_model_unchanged(kwargs, exc):
    model = tiny_lm()
    before = snapshot(model)
    with pytest.raises(exc):
        apply_qlora(model, ALL, **kwargs)
    assert_unchanged(model, before)


def test_use_dora_is_refused_and_the_model_unchanged():
    model = tiny_lm()
    before = snapshot(model)
    with pytest.raises(ValueError, match="use_dora=True is not supported by apply_qlora"):
        apply_qlora(model, LoRAConfig(target_modules="all-linear", use_dora=True))
    assert_unchanged(model, before)


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"blocksize": 63}, ValueError, "blocksize must be a power of two"),
    ({"init": "pissa", "r": 33}, ValueError, "PiSSA needs r singular vectors"),
    ({"r": 0}, ValueError, "r must be a positive int"),
    ({"dropout": 2.0}, ValueError, "dropout must be in"),
])
def test_a_failing_constructor_leaves_the_callers_layer_unchanged(kwargs, exc, match):
    base = nn.Linear(32, 32)
    before = snapshot(base)
    with pytest.raises(exc, match=match):
        QLoRALinear(base, **kwargs)
    assert_unchanged(base, before)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_base_is_refused_before_it_is_frozen(value):
    base = nn.Linear(32, 32)
    with torch.no_grad():
        base.weight[0, 0] = value
    before = snapshot(base)
    with pytest.raises(ValueError, match="base.weight contains NaN or inf"):
        QLoRALinear(base)
    assert_unchanged(base, before)


# --------------------------------------------------------------------------- item 5: no stacking
@pytest.mark.parametrize("first", ["lora", "dora", "adalora", "qlora", "qlora-bitsandbytes", "pissa"])
def test_a_regex_apply_qlora_on_an_adapted_model_is_refused(first):
    model = tiny_lm()
    if first == "adalora":
        lorakit.apply_adalora(model, lorakit.AdaLoRAConfig(init_r=4, target_r=2, total_step=10,
                                                           target_modules=["q_proj", "v_proj"]))
    elif first.startswith("qlora"):
        apply_qlora(model, LoRAConfig(r=2, target_modules=["q_proj", "v_proj"]), blocksize=32,
                    backend="bitsandbytes" if first.endswith("bitsandbytes") else "lorakit")
    else:
        lorakit.apply_lora(model, LoRAConfig(r=2, target_modules=["q_proj", "v_proj"], use_dora=first == "dora",
                                             init="pissa" if first == "pissa" else "kaiming"))
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"already has adapter layers \(.*layers\.0\.self_attn\.q_proj.*apply_qlora"):
        apply_qlora(model, REGEX, blocksize=32)
    assert_unchanged(model, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adapters_on_top_of_a_qlora_model_are_refused(backend):
    """With backend="bitsandbytes" the frozen base is a Linear4bit, an nn.Linear subclass: still refused."""
    model = apply_qlora(tiny_lm(), LoRAConfig(r=2, target_modules=["q_proj"]), blocksize=32, backend=backend)
    before = snapshot(model)
    with pytest.raises(ValueError, match="already has adapter layers"):
        lorakit.apply_lora(model, LoRAConfig(target_modules=r".*q_proj(\.base)?"))
    with pytest.raises(ValueError, match=r"'layers\.0\.self_attn\.q_proj' already carries a QLoRA adapter"):
        find_target_modules(model, r".*q_proj\.base")
    with pytest.raises(ValueError, match="already has adapter layers"):
        lorakit.apply_adalora(model, lorakit.AdaLoRAConfig(total_step=10, target_modules="all-linear"))
    assert_unchanged(model, before)


def test_merged_and_unloaded_models_can_be_adapted_again():
    model = merge_qlora(apply_qlora(tiny_lm(), ALL, blocksize=32))
    apply_qlora(model, REGEX, blocksize=32)
    assert sorted(lora_layers(model)) == sorted(find_target_modules(tiny_lm(), REGEX.target_modules))
