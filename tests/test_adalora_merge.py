"""Merging AdaLoRA models (issue 9, items 7 and 9): ``merge_lora``, ``unmerge_lora``, ``merge_and_unload``.

The merged model computes what the unmerged one did (fp tolerance) and what PEFT's ``merge_and_unload``
gives on the same weights; a bf16/fp16 base is rounded once (``W0 + ΔW`` formed in fp32), as PEFT does;
a layer that cannot merge (NaN factors) is found before any layer is merged, leaving the model unchanged.
"""

from __future__ import annotations

import copy

import pytest
import torch
from adalora_builders import ALL7, BUILDS, QV, config, ids_for, randomize_lorakit, rel_diff, train_lorakit
from builders import logits
from snapshot import assert_unchanged, snapshot
from torch import nn

import lorakit
from lorakit.adalora import SVDLinear, adalora_layers, apply_adalora

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    # PEFT 0.21.2's own warnings about its AdaLoRA files (see tests/test_adalora_io.py)
    pytest.mark.filterwarnings("ignore:.*LoRA tensor\\(s\\) have invalid shape.*"),
    pytest.mark.filterwarnings("ignore:The following rank_pattern keys did not match.*"),
]

TOL = 1e-5
KINDS = ["llama", "tinylm"]


@pytest.mark.parametrize("targets", [QV, "all-linear"], ids=["qv", "all-linear"])
@pytest.mark.parametrize("kind", KINDS)
def test_merge_unmerge_and_unload_keep_the_outputs(kind, targets):
    pytest.importorskip("transformers")
    model = train_lorakit(kind, seed=4, targets=targets)  # pruned: some Λ_i are zero
    ids = ids_for(kind)
    weights = {n: layer.base.weight.detach().clone() for n, layer in adalora_layers(model).items()}
    with torch.no_grad():
        want = logits(model, ids)
        assert rel_diff(want, logits(BUILDS[kind](), ids)) > 1e-2
        assert lorakit.merge_lora(model) is model
        assert all(layer.merged for layer in adalora_layers(model).values())
        assert rel_diff(logits(model, ids), want) <= TOL
        lorakit.merge_lora(model)  # merging a merged model changes nothing (and does not warn per layer)
        assert rel_diff(logits(model, ids), want) <= TOL
        lorakit.unmerge_lora(model)
        assert not any(layer.merged for layer in adalora_layers(model).values())
        for name, layer in adalora_layers(model).items():
            assert (layer.base.weight - weights[name]).abs().max().item() <= 1e-6, name
        assert rel_diff(logits(model, ids), want) <= TOL
        plain = lorakit.merge_and_unload(model)
        assert not adalora_layers(plain) and not hasattr(plain, "adalora_config")
        assert all(type(plain.get_submodule(n)) is nn.Linear for n in weights)
        assert not any(p.requires_grad for n, p in plain.named_parameters() if "proj" in n)
        assert rel_diff(logits(plain, ids), want) <= TOL


@pytest.mark.parametrize("kind", KINDS)
def test_merge_and_unload_equals_peft_on_the_same_adapter(tmp_path, kind):
    peft = pytest.importorskip("peft")
    from adalora_builders import train_peft

    theirs = train_peft(kind, seed=3)
    theirs.save_pretrained(tmp_path)
    ours = lorakit.load_adapter(BUILDS[kind](), tmp_path)
    theirs = peft.PeftModel.from_pretrained(BUILDS[kind](), tmp_path).eval()
    ids = ids_for(kind)
    with torch.no_grad():
        before = logits(ours, ids)
        merged_theirs, merged_ours = theirs.merge_and_unload(), lorakit.merge_and_unload(ours)
        state_theirs, state_ours = merged_theirs.state_dict(), merged_ours.state_dict()
        assert state_theirs.keys() == state_ours.keys()
        for key, value in state_theirs.items():
            assert (value - state_ours[key]).abs().max().item() <= 1e-6, key
        assert rel_diff(logits(merged_ours, ids), logits(merged_theirs, ids)) <= TOL
        assert rel_diff(logits(merged_ours, ids), before) <= TOL


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_merge_rounds_once_and_equals_peft(dtype):
    peft = pytest.importorskip("peft")
    from adalora_builders import peft_layers, randomize_peft

    base = BUILDS["llama"]().to(dtype)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.AdaLoraConfig(**config(ALL7).to_peft_dict()))
    randomize_peft(theirs)
    ours = apply_adalora(base, config(ALL7))
    with torch.no_grad():
        for name, layer in adalora_layers(ours).items():
            for k in ("lora_A", "lora_E", "lora_B"):
                getattr(layer, k).copy_(getattr(peft_layers(theirs)[name], k)["default"])
    layers = adalora_layers(ours)
    w0 = {n: layer.base.weight.detach().clone() for n, layer in layers.items()}
    delta = {n: layer.delta_weight_unrounded().detach() for n, layer in layers.items()}
    assert all(d.dtype == torch.float32 for d in delta.values())
    lorakit.merge_lora(ours)
    theirs.base_model.merge_adapter()
    twice = differ = total = 0
    for name, layer in layers.items():
        merged = layer.base.weight
        assert merged.dtype == dtype
        exact = (w0[name].double() + delta[name].double()).to(dtype)  # W0 + ΔW, correctly rounded once
        assert torch.equal(merged, exact), name
        assert torch.equal(merged, peft_layers(theirs)[name].get_base_layer().weight), name  # PEFT rounds once too
        double_rounded = w0[name] + delta[name].to(dtype)
        differ += int((double_rounded != exact).sum())
        total += exact.numel()
        twice += int((w0[name] + layer.delta_weight() != exact).sum())
    assert twice == differ and differ / total > 0.01  # rounding ΔW first would have changed that many weights


def test_unmerge_in_bf16_restores_w0_up_to_one_rounding():
    torch.manual_seed(0)
    layer = SVDLinear(nn.Linear(64, 32).to(torch.bfloat16), r=4, alpha=8)
    with torch.no_grad():
        layer.lora_E.normal_()
        layer.lora_A.normal_(0, 0.3)
        layer.lora_B.normal_(0, 0.3)
    w0 = layer.base.weight.detach().clone()
    layer.merge()
    merged = layer.base.weight.detach().float().clone()
    layer.unmerge()
    # two roundings, each at most half a bf16 ulp (unit roundoff 2^-8) of the value it rounds
    bound = 2**-8 * (merged.abs() + w0.float().abs()) + 1e-30
    err = (layer.base.weight.float() - w0.float()).abs()
    assert (err <= bound).all() and err.max().item() > 0  # not exact in bf16, but within the two roundings


@pytest.mark.parametrize("factor", ["lora_A", "lora_E", "lora_B"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_merge_lora_checks_every_layer_before_merging_any(factor, value):
    model = apply_adalora(BUILDS["tinylm"](), config(ALL7))
    randomize_lorakit(model)
    with torch.no_grad():
        getattr(list(adalora_layers(model).values())[-1], factor).view(-1)[0] = value  # the LAST layer
    before = snapshot(model)
    with pytest.raises(ValueError, match=f"{factor} hold NaN or inf"):
        lorakit.merge_lora(model)
    assert_unchanged(model, before)
    with pytest.raises(ValueError, match=f"{factor} hold NaN or inf"):
        lorakit.merge_and_unload(model)
    assert_unchanged(model, before)


def test_layer_merge_refuses_non_finite_factors_and_stays_unmerged():
    torch.manual_seed(0)
    layer = SVDLinear(nn.Linear(6, 5), r=3)
    with torch.no_grad():
        layer.lora_E.fill_(float("nan"))
    w0 = layer.base.weight.detach().clone()
    with pytest.raises(ValueError, match="lora_E hold NaN or inf"):
        layer.merge()
    assert not layer.merged and torch.equal(layer.base.weight, w0)


def test_merged_adalora_model_saves_the_adapter(tmp_path):
    """Saving a merged model still writes the adapter (kilobytes), which reloads onto the original base."""
    model = train_lorakit("tinylm", seed=4)
    ids = ids_for("tinylm")
    with torch.no_grad():
        want = logits(model, ids)
        lorakit.merge_lora(model)
        lorakit.save_adapter(model, tmp_path)
        back = lorakit.load_adapter(BUILDS["tinylm"](), tmp_path)
        assert rel_diff(logits(back, ids), want) <= TOL
