"""Cross-checks of lorakit against Hugging Face PEFT on the same models.

Three directions, on a tiny LLaMA built from a config (no download) and on the course's TinyLM:
(a) PEFT loads an adapter lorakit saved and computes the same logits; (b) lorakit loads an adapter
PEFT saved and computes the same logits; (c) with identical A/B weights, lorakit's forward, gradients,
merge and unmerge equal PEFT's. Every adapter gets a random non-zero B so that it actually matters.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from builders import TARGETS, input_ids, logits, peft_layers, tiny_llama, tiny_lm  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

import lorakit  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*"),
]

TOL = 1e-5


def randomize_lorakit(model: torch.nn.Module, seed: int = 2) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in sorted(lorakit.lora_layers(model).items()):
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=gen) * 0.2)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.2)


def randomize_peft(model: torch.nn.Module, seed: int = 3) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in sorted(peft_layers(model).items()):
            b = layer.lora_B["default"].weight
            b.copy_((torch.randn(b.shape, generator=gen) * 0.2).to(b.dtype))


def copy_peft_weights_into_lorakit(peft_model: torch.nn.Module, model: torch.nn.Module) -> None:
    ours, theirs = lorakit.lora_layers(model), peft_layers(peft_model)
    assert set(ours) == set(theirs)
    with torch.no_grad():
        for name, layer in ours.items():
            layer.lora_A.copy_(theirs[name].lora_A["default"].weight)
            layer.lora_B.copy_(theirs[name].lora_B["default"].weight)


def peft_config(target, rslora: bool, r: int = 4, alpha: float = 8, dropout: float = 0.0) -> LoraConfig:
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target, use_rslora=rslora)


def lorakit_config(target, rslora: bool, r: int = 4, alpha: float = 8, dropout: float = 0.0) -> lorakit.LoRAConfig:
    return lorakit.LoRAConfig(r=r, alpha=alpha, dropout=dropout, target_modules=target, rslora=rslora)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ---------------------------------------------------------------- (a) PEFT loads lorakit's adapter


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("target", list(TARGETS))
def test_peft_loads_lorakit_adapter(tmp_path, target, rslora):
    base, ids = tiny_llama(), input_ids()
    ours = lorakit.apply_lora(copy.deepcopy(base), lorakit_config(TARGETS[target], rslora))
    randomize_lorakit(ours)
    lorakit.save_adapter(ours, tmp_path)
    theirs = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    assert set(peft_layers(theirs)) == set(lorakit.lora_layers(ours))
    with torch.no_grad():
        want, got, plain = logits(ours, ids), logits(theirs, ids), logits(base, ids)
    assert max_diff(want, plain) > 1e-2  # the adapter changes the output
    assert max_diff(want, got) <= TOL
    layer = next(iter(peft_layers(theirs).values()))
    assert layer.scaling["default"] == pytest.approx(next(iter(lorakit.lora_layers(ours).values())).scaling)


# ---------------------------------------------------------------- (b) lorakit loads PEFT's adapter


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("target", list(TARGETS))
def test_lorakit_loads_peft_adapter(tmp_path, target, rslora):
    base, ids = tiny_llama(), input_ids()
    theirs = get_peft_model(copy.deepcopy(base), peft_config(TARGETS[target], rslora)).eval()
    randomize_peft(theirs)
    theirs.save_pretrained(tmp_path)
    ours = lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    assert set(lorakit.lora_layers(ours)) == set(peft_layers(theirs))
    with torch.no_grad():
        want, got, plain = logits(theirs, ids), logits(ours, ids), logits(base, ids)
    assert max_diff(want, plain) > 1e-2
    assert max_diff(want, got) <= TOL


# ---------------------------------------------------------------- (c) same weights: forward, merge, unmerge


def _same_weight_pair(base, target, rslora, **kw):
    theirs = get_peft_model(copy.deepcopy(base), peft_config(target, rslora, **kw))
    randomize_peft(theirs)
    ours = lorakit.apply_lora(copy.deepcopy(base), lorakit_config(target, rslora, **kw))
    copy_peft_weights_into_lorakit(theirs, ours)
    return ours, theirs


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("target", list(TARGETS))
def test_same_weights_forward_merge_unmerge(target, rslora):
    base, ids = tiny_llama(), input_ids()
    ours, theirs = _same_weight_pair(base, TARGETS[target], rslora)
    ours.eval(), theirs.eval()
    originals = {n: layer.base.weight.detach().clone() for n, layer in lorakit.lora_layers(ours).items()}
    with torch.no_grad():
        assert max_diff(logits(ours, ids), logits(theirs, ids)) <= TOL
        lorakit.merge_lora(ours)
        merged_peft = theirs.merge_and_unload()
        for name, layer in lorakit.lora_layers(ours).items():
            assert layer.merged
            assert max_diff(layer.base.weight, merged_peft.get_submodule(name).weight) <= 1e-6
        assert max_diff(logits(ours, ids), logits(merged_peft, ids)) <= TOL
        lorakit.unmerge_lora(ours)
        for name, layer in lorakit.lora_layers(ours).items():
            assert not layer.merged
            assert max_diff(layer.base.weight, originals[name]) <= 1e-6
        dense = lorakit.merge_and_unload(ours)
        assert not lorakit.lora_layers(dense)
        assert max_diff(logits(dense, ids), logits(merged_peft, ids)) <= TOL


@pytest.mark.parametrize("rslora", [False, True])
def test_gradients_of_A_and_B_match_peft(rslora):
    base, ids = tiny_llama(), input_ids()
    ours, theirs = _same_weight_pair(base, "all-linear", rslora)
    labels = input_ids(seed=5)
    for model in (ours, theirs):
        model.train()
        out = logits(model, ids)
        torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), labels.reshape(-1)).backward()
    theirs_layers = peft_layers(theirs)
    for name, layer in lorakit.lora_layers(ours).items():
        ga, gb = theirs_layers[name].lora_A["default"].weight.grad, theirs_layers[name].lora_B["default"].weight.grad
        assert layer.lora_A.grad is not None and layer.lora_B.grad is not None
        assert torch.allclose(layer.lora_A.grad, ga, rtol=1e-4, atol=1e-6), name
        assert torch.allclose(layer.lora_B.grad, gb, rtol=1e-4, atol=1e-6), name
    # only the adapters receive gradients, in both libraries
    assert all(p.grad is None for n, p in ours.named_parameters() if "lora_" not in n)
    assert all(p.grad is None for n, p in theirs.named_parameters() if "lora_" not in n)


def test_trainable_parameter_counts_match_peft():
    base = tiny_llama()
    for target in TARGETS.values():
        ours = lorakit.apply_lora(copy.deepcopy(base), lorakit_config(target, False))
        theirs = get_peft_model(copy.deepcopy(base), peft_config(target, False))
        assert lorakit.trainable_parameters(ours) == theirs.get_nb_trainable_parameters()


# ---------------------------------------------------------------- dropout, bf16


def test_dropout_config_round_trips_both_ways(tmp_path):
    base, ids = tiny_llama(), input_ids()
    ours = lorakit.apply_lora(copy.deepcopy(base), lorakit_config(["q_proj", "v_proj"], False, dropout=0.1))
    randomize_lorakit(ours)
    lorakit.save_adapter(ours, tmp_path / "ours")
    theirs = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    assert theirs.peft_config["default"].lora_dropout == pytest.approx(0.1)
    assert all(layer.lora_dropout["default"].p == pytest.approx(0.1) for layer in peft_layers(theirs).values())
    with torch.no_grad():  # eval mode: dropout is off in both
        assert max_diff(logits(ours.eval(), ids), logits(theirs, ids)) <= TOL

    theirs.save_pretrained(tmp_path / "theirs")
    back = lorakit.load_adapter(copy.deepcopy(base), tmp_path / "theirs")
    assert all(layer.dropout == pytest.approx(0.1) for layer in lorakit.lora_layers(back).values())
    assert json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())["lora_dropout"] == pytest.approx(0.1)
    with torch.no_grad():
        assert max_diff(logits(back.eval(), ids), logits(theirs, ids)) <= TOL


@pytest.mark.parametrize("rslora", [False, True])
def test_bf16_base_close_to_peft(rslora):
    base, ids = tiny_llama().to(torch.bfloat16), input_ids()
    ours, theirs = _same_weight_pair(base, "all-linear", rslora)
    ours.eval(), theirs.eval()
    for layer in lorakit.lora_layers(ours).values():  # adapters stay fp32 on a bf16 base, as PEFT's
        assert layer.lora_A.dtype == torch.float32 and layer.base.weight.dtype == torch.bfloat16
    for layer in peft_layers(theirs).values():
        assert layer.lora_A["default"].weight.dtype == torch.float32
    with torch.no_grad():
        want, got = logits(theirs, ids), logits(ours, ids)
    assert got.dtype == want.dtype
    assert max_diff(want, got) <= 2e-2 * max(1.0, want.float().abs().max().item())


# ---------------------------------------------------------------- TinyLM (a plain nn.Module) with PEFT

TINY_TARGETS = [["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]]


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("target", TINY_TARGETS, ids=["qv", "all7"])
def test_tinylm_with_peft(tmp_path, target, rslora):
    base, ids = tiny_lm(), input_ids(vocab=32)
    # (a) PEFT loads lorakit's adapter
    ours = lorakit.apply_lora(copy.deepcopy(base), lorakit_config(target, rslora))
    randomize_lorakit(ours)
    lorakit.save_adapter(ours, tmp_path / "ours")
    theirs = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    with torch.no_grad():
        assert max_diff(logits(ours, ids), logits(base, ids)) > 1e-3
        assert max_diff(logits(ours, ids), logits(theirs, ids)) <= TOL
    # (b) lorakit loads PEFT's adapter
    theirs = get_peft_model(copy.deepcopy(base), peft_config(target, rslora)).eval()
    randomize_peft(theirs)
    theirs.save_pretrained(tmp_path / "theirs")
    back = lorakit.load_adapter(copy.deepcopy(base), tmp_path / "theirs")
    with torch.no_grad():
        assert max_diff(logits(back, ids), logits(theirs, ids)) <= TOL
    # (c) same weights: merge equals PEFT's merge
    ours, theirs = _same_weight_pair(base, target, rslora)
    with torch.no_grad():
        assert max_diff(logits(ours.eval(), ids), logits(theirs.eval(), ids)) <= TOL
        merged = theirs.merge_and_unload()
        lorakit.merge_lora(ours)
        assert max_diff(logits(ours, ids), logits(merged, ids)) <= TOL


def test_tinylm_all_linear_matches_peft_except_lm_head():
    """PEFT only excludes the output layer of a transformers PreTrainedModel; lorakit always skips lm_head."""
    base = tiny_lm()
    ours = lorakit.apply_lora(copy.deepcopy(base), lorakit.LoRAConfig(target_modules="all-linear"))
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(target_modules="all-linear"))
    assert set(peft_layers(theirs)) - set(lorakit.lora_layers(ours)) == {"lm_head"}


@pytest.mark.filterwarnings("ignore:Found missing adapter keys")
def test_peft_loads_tinylm_all_linear_adapter_with_same_layers(tmp_path):
    base = tiny_lm()
    ours = lorakit.apply_lora(copy.deepcopy(base), lorakit.LoRAConfig(target_modules="all-linear"))
    lorakit.save_adapter(ours, tmp_path)
    theirs = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    assert set(peft_layers(theirs)) == set(lorakit.lora_layers(ours))
