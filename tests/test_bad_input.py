"""Bad input: every case raises a ValueError/TypeError naming the argument or the problem, and leaves
the model exactly as it was (same tensors, same module types, same LoRA layers, same requires_grad)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from builders import tiny_lm
from safetensors.torch import load_file, save_file
from torch import nn

import lorakit

WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "types": {n: type(m) for n, m in model.named_modules()},
        "lora": {n: id(m) for n, m in lorakit.lora_layers(model).items()},
        "grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "hyper": {n: (m.r, m.alpha, m.scaling, m.dropout, m.rslora, m.merged)
                  for n, m in lorakit.lora_layers(model).items()},
        "config": getattr(model, "lora_config", None),
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["types"] == before["types"]
    assert after["lora"] == before["lora"]
    assert after["grad"] == before["grad"]
    assert after["hyper"] == before["hyper"]
    assert after["config"] == before["config"]
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key


def lora_model(r: int = 4, targets=("q_proj", "v_proj"), seed: int = 2) -> nn.Module:
    model = lorakit.apply_lora(tiny_lm(), lorakit.LoRAConfig(r=r, alpha=8, target_modules=list(targets)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lorakit.lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen))
    return model


@pytest.fixture
def adapter(tmp_path):
    """A valid r=4 adapter directory for q_proj/v_proj of the tiny LM."""
    lorakit.save_adapter(lora_model(), tmp_path / "adapter")
    return tmp_path / "adapter"


# ---------------------------------------------------------------- hyper-parameters

BAD_R = [(0, ValueError), (-1, ValueError), (2.0, TypeError), ("8", TypeError), (True, TypeError), (None, TypeError)]
BAD_ALPHA = [(0, ValueError), (-1.5, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
             ("16", TypeError), (None, TypeError)]
BAD_DROPOUT = [(-0.1, ValueError), (1.0, ValueError), (1.5, ValueError), ("0.1", TypeError)]


@pytest.mark.parametrize(("r", "exc"), BAD_R, ids=repr)
def test_bad_r(r, exc):
    model = tiny_lm()
    before = snapshot(model)
    with pytest.raises(exc, match=r"^r must"):
        lorakit.apply_lora(model, lorakit.LoRAConfig(r=r))
    base = nn.Linear(8, 8)
    with pytest.raises(exc, match=r"^r must"):
        lorakit.LoRALinear(base, r=r)
    assert base.weight.requires_grad  # the base layer was not frozen either
    assert_unchanged(model, before)


@pytest.mark.parametrize(("alpha", "exc"), BAD_ALPHA, ids=repr)
def test_bad_alpha(alpha, exc):
    model = tiny_lm()
    before = snapshot(model)
    with pytest.raises(exc, match="alpha must"):
        lorakit.apply_lora(model, lorakit.LoRAConfig(alpha=alpha))
    with pytest.raises(exc, match="alpha must"):
        lorakit.LoRALinear(nn.Linear(8, 8), r=2, alpha=alpha)
    assert_unchanged(model, before)


@pytest.mark.parametrize(("dropout", "exc"), BAD_DROPOUT, ids=repr)
def test_bad_dropout(dropout, exc):
    model = tiny_lm()
    before = snapshot(model)
    with pytest.raises(exc, match="dropout must"):
        lorakit.apply_lora(model, lorakit.LoRAConfig(dropout=dropout))
    with pytest.raises(exc, match="dropout must"):
        lorakit.LoRALinear(nn.Linear(8, 8), r=2, dropout=dropout)
    assert_unchanged(model, before)


def test_bad_init_rslora_and_base():
    with pytest.raises(ValueError, match="init must"):
        lorakit.LoRAConfig(init="xavier")
    with pytest.raises(TypeError, match="rslora must"):
        lorakit.LoRAConfig(rslora="yes")
    with pytest.raises(TypeError, match="base must"):
        lorakit.LoRALinear(nn.Conv1d(4, 4, 1), r=2)


def test_rank_above_layer_width_warns_and_layer_is_valid():
    base = nn.Linear(4, 6)
    with pytest.warns(lorakit.RankWarning, match=r"r=5 exceeds min\(in_features, out_features\)=4"):
        layer = lorakit.LoRALinear(base, r=5)
    assert layer.lora_A.shape == (5, 4) and layer.lora_B.shape == (6, 5)
    x = torch.randn(3, 4)
    assert torch.allclose(layer(x), base(x))  # B = 0 at init
    with pytest.warns(lorakit.RankWarning):
        model = lorakit.apply_lora(tiny_lm(), lorakit.LoRAConfig(r=40, target_modules=["q_proj"]))
    assert all(m.r == 40 for m in lorakit.lora_layers(model).values())


def test_pissa_rank_above_width_is_an_error():
    with pytest.raises(ValueError, match="r=5 exceeds"):
        lorakit.LoRALinear(nn.Linear(4, 6), r=5, init="pissa")


class TwoWidths(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Linear(16, 16)
        self.narrow = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.narrow(self.wide(x))


def test_pissa_failure_leaves_model_unchanged():
    # the wide layer alone would be fine: it must not be frozen or PiSSA-rewritten before the narrow one fails
    torch.manual_seed(0)
    model = TwoWidths()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"r=8 .*\['narrow'\]"):
        lorakit.apply_lora(model, lorakit.LoRAConfig(r=8, target_modules=["wide", "narrow"], init="pissa"))
    assert_unchanged(model, before)


# ---------------------------------------------------------------- target_modules, apply twice, wrong types

@pytest.mark.parametrize("targets", [["nope"], ["proj"], r"layers\.9\..*", "q_proj"], ids=str)
def test_targets_matching_nothing_list_the_linear_layers(targets):
    model = tiny_lm()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"target_modules=.*matched no nn\.Linear.*layers\.0\.self_attn\.q_proj"):
        lorakit.apply_lora(model, lorakit.LoRAConfig(target_modules=targets))
    assert_unchanged(model, before)


@pytest.mark.parametrize(("targets", "exc"), [([], TypeError), (5, TypeError), (["q_proj", 3], TypeError),
                                              ([""], TypeError), ("(", ValueError)], ids=repr)
def test_bad_target_modules_type(targets, exc):
    with pytest.raises(exc, match="target_modules"):
        lorakit.LoRAConfig(target_modules=targets)


def test_apply_lora_twice():
    model = lora_model()
    before = snapshot(model)
    with pytest.raises(ValueError, match="already has adapter layers"):
        lorakit.apply_lora(model, lorakit.LoRAConfig(target_modules="all-linear"))
    assert_unchanged(model, before)


def test_apply_lora_wrong_argument_types():
    model = tiny_lm()
    before = snapshot(model)
    with pytest.raises(TypeError, match="config must"):
        lorakit.apply_lora(model, {"r": 8})
    with pytest.raises(TypeError, match="model must"):
        lorakit.apply_lora("model", lorakit.LoRAConfig())
    assert_unchanged(model, before)


def test_save_without_lora_layers(tmp_path):
    with pytest.raises(ValueError, match="no LoRA or AdaLoRA layers"):
        lorakit.save_adapter(tiny_lm(), tmp_path)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- loading broken adapters

def _edit_tensors(directory, edit) -> None:
    tensors = dict(load_file(directory / WEIGHTS))
    edit(tensors)
    save_file(tensors, directory / WEIGHTS)


def _edit_config(directory, edit) -> None:
    raw = json.loads((directory / CONFIG).read_text())
    edit(raw)
    (directory / CONFIG).write_text(json.dumps(raw))


def _first_key(tensors, suffix="lora_A.weight"):
    return sorted(k for k in tensors if k.endswith(suffix))[0]


def _wrong_shape(d):
    def edit(t):
        key = _first_key(t)
        t[key] = torch.zeros(t[key].shape[0], t[key].shape[1] + 1)
    _edit_tensors(d, edit)


def _missing_key(d):
    _edit_tensors(d, lambda t: t.pop(_first_key(t, "lora_B.weight")))


def _unexpected_key(d):
    _edit_tensors(d, lambda t: t.update({"base_model.model.layers.0.mlp.up_proj.lora_A.weight": torch.zeros(4, 32)}))


def _non_finite(d):
    def edit(t):
        key = _first_key(t)
        t[key] = torch.full_like(t[key], float("nan"))
    _edit_tensors(d, edit)


def _corrupted(d):
    (d / WEIGHTS).write_bytes(os.urandom(4096))


def _truncated(d):
    data = (d / WEIGHTS).read_bytes()
    (d / WEIGHTS).write_bytes(data[: len(data) // 2])


def _invalid_json(d):
    (d / CONFIG).write_text('{"peft_type": "LORA", "r": 4,')


def _json_list(d):
    (d / CONFIG).write_text("[1, 2]")


def _missing_r(d):
    _edit_config(d, lambda raw: raw.pop("r"))


def _string_r(d):
    _edit_config(d, lambda raw: raw.update(r="4"))


def _prefix_tuning(d):
    _edit_config(d, lambda raw: raw.update(peft_type="PREFIX_TUNING"))


def _dora(d):
    _edit_config(d, lambda raw: raw.update(use_dora=True))


def _lora_bias(d):
    _edit_config(d, lambda raw: raw.update(bias="all"))


def _missing_weights(d):
    (d / WEIGHTS).unlink()


def _missing_config(d):
    (d / CONFIG).unlink()


BROKEN = [
    (_wrong_shape, r"lora_A\.weight has shape \(4, 33\), expected \(4, 32\)"),
    (_missing_key, r"missing \['base_model\.model\.layers\.0\.self_attn\.q_proj\.lora_B\.weight'\]"),
    (_unexpected_key, r"unexpected \['base_model\.model\.layers\.0\.mlp\.up_proj\.lora_A\.weight'\]"),
    (_non_finite, "finite"),
    (_corrupted, "adapter_model.safetensors is corrupted or truncated"),
    (_truncated, "adapter_model.safetensors is corrupted or truncated"),
    (_invalid_json, "adapter_config.json is not valid JSON"),
    (_json_list, "adapter_config.json must hold a JSON object"),
    (_missing_r, "adapter_config.json: r is missing"),
    (_string_r, "adapter_config.json: r must be an int, got str"),
    (_prefix_tuning, "peft_type must be 'LORA', got 'PREFIX_TUNING'"),
    (_dora, "use_dora=True"),
    (_lora_bias, r"PEFT features not supported by lorakit: \{'bias': 'all'\}"),
    (_missing_weights, "has no adapter_model.safetensors"),
    (_missing_config, "has no adapter_config.json"),
]


@pytest.mark.parametrize(("break_it", "message"), BROKEN, ids=[b.__name__.strip("_") for b, _ in BROKEN])
@pytest.mark.parametrize("into", ["fresh", "hot-swap"])
def test_loading_a_broken_adapter(adapter, break_it, message, into):
    break_it(adapter)
    model = tiny_lm() if into == "fresh" else lora_model(seed=7)
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        lorakit.load_adapter(model, adapter)
    assert_unchanged(model, before)


def test_loading_from_a_missing_directory(tmp_path):
    model = tiny_lm()
    before = snapshot(model)
    with pytest.raises(ValueError, match="directory=.*does-not-exist' does not exist"):
        lorakit.load_adapter(model, tmp_path / "does-not-exist")
    assert_unchanged(model, before)


def test_loading_an_adapter_of_another_rank(adapter):
    model = lora_model(r=8)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"the adapter has r=4 but the model's LoRA layer .* has r=8"):
        lorakit.load_adapter(model, adapter)
    assert_unchanged(model, before)


def test_loading_an_adapter_for_other_modules(tmp_path):
    lorakit.save_adapter(lora_model(targets=("k_proj",)), tmp_path)
    model = lora_model()  # q_proj, v_proj
    before = snapshot(model)
    with pytest.raises(ValueError, match="adapter keys do not match the model"):
        lorakit.load_adapter(model, tmp_path)
    assert_unchanged(model, before)


def test_loading_into_a_merged_model(adapter):
    model = lorakit.merge_lora(lora_model(seed=7))
    before = snapshot(model)
    with pytest.raises(ValueError, match="is merged; unmerge before loading"):
        lorakit.load_adapter(model, adapter)
    assert_unchanged(model, before)


def test_loading_an_adapter_whose_targets_match_nothing(adapter):
    _edit_config(adapter, lambda raw: raw.update(target_modules=["nope"]))
    model = tiny_lm()
    before = snapshot(model)
    with pytest.raises(ValueError, match="target_modules=.*match no nn.Linear"):
        lorakit.load_adapter(model, adapter)
    assert_unchanged(model, before)
