"""The model-level API of lorakit.peft: config defaults, target matching, freezing, counting,
merge/unmerge, and the adapter file format (compared with Hugging Face PEFT where PEFT has an answer)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from builders import tiny_llama, tiny_lm
from safetensors.torch import load_file
from torch import nn

import lorakit

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft.tuners.lora import LoraLayer  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*"),
]
PREFIX = "base_model.model."


IDS = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(1))


def randomize(model: nn.Module, seed: int = 2, std: float = 0.2) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in sorted(lorakit.lora_layers(model).items()):
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=gen) * std)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * std)


def peft_adapted(model: nn.Module, target) -> list[str]:
    wrapped = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(target_modules=target))
    return sorted(n.removeprefix(PREFIX) for n, m in wrapped.named_modules() if isinstance(m, LoraLayer))


# ---------------------------------------------------------------- config


def test_config_defaults_equal_peft_defaults():
    ours, theirs = lorakit.LoRAConfig(), peft.LoraConfig()
    assert (ours.r, ours.alpha, ours.dropout) == (theirs.r, theirs.lora_alpha, theirs.lora_dropout) == (8, 8, 0.0)
    assert ours.rslora is theirs.use_rslora is False
    assert ours.init == "kaiming" and theirs.init_lora_weights is True
    # PEFT's default targets for LLaMA-family models
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

    assert sorted(ours.target_modules) == sorted(defaults["llama"])


def test_config_to_peft_dict_round_trip():
    cfg = lorakit.LoRAConfig(r=4, alpha=16, dropout=0.1, target_modules=r".*\.q_proj", rslora=True, init="gaussian")
    raw = cfg.to_peft_dict()
    assert raw["peft_type"] == "LORA" and raw["r"] == 4 and raw["lora_alpha"] == 16 and raw["use_rslora"] is True
    assert raw["init_lora_weights"] == "gaussian" and raw["use_dora"] is False
    assert lorakit.LoRAConfig.from_peft_dict(json.loads(json.dumps(raw))) == cfg
    # PEFT itself accepts every key lorakit writes
    theirs = peft.LoraConfig(**{k: v for k, v in raw.items() if k not in ("peft_type",)})
    assert (theirs.r, theirs.lora_alpha, theirs.use_rslora) == (4, 16, True)


# ---------------------------------------------------------------- target matching (same modules as PEFT)

SPECS = [
    ["q_proj", "v_proj"],
    ["down_proj"],
    ["self_attn.o_proj"],
    r".*\.(q|v)_proj",
    r"model\.layers\.1\..*_proj",
    "all-linear",
]


@pytest.mark.parametrize("target", SPECS, ids=lambda t: str(t))
def test_target_modules_select_what_peft_selects(target):
    base = tiny_llama()
    ours = lorakit.apply_lora(copy.deepcopy(base), lorakit.LoRAConfig(target_modules=target))
    assert sorted(lorakit.lora_layers(ours)) == peft_adapted(base, target)


def test_default_targets_select_what_peft_selects():
    base = tiny_llama()
    ours = lorakit.apply_lora(copy.deepcopy(base), lorakit.LoRAConfig())
    wrapped = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig())
    theirs = sorted(n.removeprefix(PREFIX) for n, m in wrapped.named_modules() if isinstance(m, LoraLayer))
    assert sorted(lorakit.lora_layers(ours)) == theirs


def test_all_linear_excludes_lm_head():
    names = lorakit.lora_layers(lorakit.apply_lora(tiny_lm(), lorakit.LoRAConfig(target_modules="all-linear")))
    assert "lm_head" not in names and len(names) == 14


def test_suffix_matches_whole_name_components_only():
    # "proj" is a suffix of the string "q_proj" but not a dotted component: it matches nothing (as PEFT).
    with pytest.raises(ValueError, match="target_modules"):
        lorakit.apply_lora(tiny_lm(), lorakit.LoRAConfig(target_modules=["proj"]))
    # a plain string is a regex matched against the full name: "q_proj" alone matches nothing (as PEFT).
    with pytest.raises(ValueError, match="target_modules"):
        lorakit.apply_lora(tiny_lm(), lorakit.LoRAConfig(target_modules="q_proj"))
    with pytest.raises(ValueError):
        peft.get_peft_model(tiny_lm(), peft.LoraConfig(target_modules="q_proj"))


# ---------------------------------------------------------------- apply_lora: freezing, identity at init, counts


def test_apply_lora_freezes_everything_else_and_starts_as_identity():
    model = tiny_lm()
    before = copy.deepcopy(model)
    out = lorakit.apply_lora(model, lorakit.LoRAConfig(r=4, target_modules="all-linear"))
    assert out is model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert len(trainable) == 2 * len(lorakit.lora_layers(model))
    for name, layer in lorakit.lora_layers(model).items():
        assert isinstance(layer, lorakit.LoRALinear) and layer.r == 4 and layer.scaling == 2.0
        assert layer.base is not None and torch.equal(layer.base.weight, before.get_submodule(name).weight)
        assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) > 0
    with torch.no_grad():
        assert torch.equal(model(IDS), before(IDS))  # B = 0: the adapted model starts as the base model
    assert model.lora_config.r == 4


@pytest.mark.parametrize("target", ["all-linear", ["q_proj", "v_proj"], r".*mlp\..*_proj"], ids=str)
@pytest.mark.parametrize("r", [1, 4])
def test_trainable_parameters_match_peft_and_formula(target, r):
    base = tiny_llama()
    ours = lorakit.apply_lora(copy.deepcopy(base), lorakit.LoRAConfig(r=r, target_modules=target))
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=r, target_modules=target))
    assert lorakit.trainable_parameters(ours) == theirs.get_nb_trainable_parameters()
    trainable, total = lorakit.trainable_parameters(ours)
    layers = lorakit.lora_layers(ours).values()
    assert trainable == sum(r * (m.in_features + m.out_features) for m in layers)
    assert total == sum(p.numel() for p in base.parameters()) + trainable


def test_trainable_parameters_of_the_course_model():
    from lorakit.models import load_tiny_lm

    model = lorakit.apply_lora(load_tiny_lm(), lorakit.LoRAConfig(r=8, alpha=16, target_modules="all-linear"))
    # 2 layers x (4 attention 128x128 + 2 up 128->256 + 1 down 256->128), each r * (in + out)
    per_layer = 4 * 8 * (128 + 128) + 3 * 8 * (128 + 256)
    total_base = sum(p.numel() for p in load_tiny_lm().parameters())
    assert lorakit.trainable_parameters(model) == (2 * per_layer, total_base + 2 * per_layer)


# ---------------------------------------------------------------- merge / unmerge / merge_and_unload


def test_merge_unmerge_and_merge_and_unload():
    model = lorakit.apply_lora(tiny_lm(), lorakit.LoRAConfig(r=4, alpha=8, target_modules="all-linear"))
    randomize(model)
    originals = {n: m.base.weight.detach().clone() for n, m in lorakit.lora_layers(model).items()}
    with torch.no_grad():
        want = model(IDS)
        assert lorakit.merge_lora(model) is model
        for name, layer in lorakit.lora_layers(model).items():
            assert layer.merged
            expected = originals[name] + layer.scaling * layer.lora_B @ layer.lora_A
            assert torch.allclose(layer.base.weight, expected, atol=1e-6)
        assert torch.allclose(model(IDS), want, atol=1e-5)
        merged_weights = {n: m.base.weight.clone() for n, m in lorakit.lora_layers(model).items()}
        lorakit.merge_lora(model)  # idempotent: no double merge
        assert all(torch.equal(m.base.weight, merged_weights[n]) for n, m in lorakit.lora_layers(model).items())
        assert lorakit.unmerge_lora(model) is model
        for name, layer in lorakit.lora_layers(model).items():
            assert not layer.merged
            assert torch.allclose(layer.base.weight, originals[name], atol=1e-6)
        assert torch.allclose(model(IDS), want, atol=1e-5)
        lorakit.unmerge_lora(model)  # idempotent
        for name, layer in lorakit.lora_layers(model).items():
            assert torch.allclose(layer.base.weight, originals[name], atol=1e-6)

        n_base = sum(p.numel() for p in tiny_lm().parameters())
        dense = lorakit.merge_and_unload(model)
        assert not lorakit.lora_layers(dense)
        assert all(type(m) is nn.Linear for n, m in dense.named_modules() if n.endswith("_proj"))
        assert not hasattr(dense, "lora_config")
        assert sum(p.numel() for p in dense.parameters()) == n_base
        assert torch.allclose(dense(IDS), want, atol=1e-5)


# ---------------------------------------------------------------- save / load


def test_adapter_files_and_key_names(tmp_path):
    model = lorakit.apply_lora(tiny_lm(), lorakit.LoRAConfig(r=4, alpha=16, target_modules=["q_proj", "down_proj"]))
    randomize(model)
    assert lorakit.save_adapter(model, tmp_path / "adapter") == tmp_path / "adapter"
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors"]
    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    expected = set()
    for name, layer in lorakit.lora_layers(model).items():
        a, b = f"{PREFIX}{name}.lora_A.weight", f"{PREFIX}{name}.lora_B.weight"
        expected |= {a, b}
        assert torch.equal(tensors[a], layer.lora_A) and torch.equal(tensors[b], layer.lora_B)
        assert tensors[a].shape == (4, layer.in_features) and tensors[b].shape == (layer.out_features, 4)
    assert set(tensors) == expected and len(expected) == 8  # adapters only, no base weights
    raw = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert raw["peft_type"] == "LORA" and raw["r"] == 4 and raw["lora_alpha"] == 16
    assert raw["target_modules"] == ["q_proj", "down_proj"]


def test_save_load_round_trip_into_fresh_model(tmp_path):
    src = lorakit.apply_lora(tiny_lm(), lorakit.LoRAConfig(r=4, alpha=12, dropout=0.05, rslora=True,
                                                           target_modules=r".*\.(k|o|up)_proj"))
    randomize(src)
    lorakit.save_adapter(src, tmp_path)
    dst = lorakit.load_adapter(tiny_lm(), tmp_path)
    assert sorted(lorakit.lora_layers(dst)) == sorted(lorakit.lora_layers(src))
    for name, layer in lorakit.lora_layers(dst).items():
        other = lorakit.lora_layers(src)[name]
        assert torch.equal(layer.lora_A, other.lora_A) and torch.equal(layer.lora_B, other.lora_B)
        assert (layer.r, layer.alpha, layer.rslora, layer.dropout, layer.scaling) == (
            other.r, other.alpha, other.rslora, other.dropout, other.scaling)
    assert dst.lora_config == src.lora_config
    with torch.no_grad():
        assert torch.equal(dst.eval()(IDS), src.eval()(IDS))


def test_hot_swap_into_model_with_lora_of_same_rank(tmp_path):
    targets = ["q_proj", "v_proj"]
    a = lorakit.apply_lora(tiny_lm(), lorakit.LoRAConfig(r=4, alpha=32, target_modules=targets))
    randomize(a, seed=10)
    lorakit.save_adapter(a, tmp_path / "a")
    b = lorakit.apply_lora(tiny_lm(), lorakit.LoRAConfig(r=4, alpha=4, target_modules=targets))
    randomize(b, seed=11)
    layers_before = lorakit.lora_layers(b)
    with torch.no_grad():
        assert not torch.allclose(b(IDS), a(IDS))
        assert lorakit.load_adapter(b, tmp_path / "a") is b
        assert torch.allclose(b(IDS), a(IDS), atol=1e-6)
    after = lorakit.lora_layers(b)
    assert all(after[n] is layers_before[n] for n in after)  # swapped in place, same modules
    assert all(m.alpha == 32 and m.scaling == 8.0 for m in after.values())


def test_hot_swap_then_save_keeps_the_loaded_config(tmp_path):
    targets = ["q_proj", "v_proj"]
    a = lorakit.apply_lora(tiny_lm(), lorakit.LoRAConfig(r=4, alpha=32, target_modules=targets))
    randomize(a, seed=10)
    lorakit.save_adapter(a, tmp_path / "a")
    b = lorakit.apply_lora(tiny_lm(), lorakit.LoRAConfig(r=4, alpha=4, target_modules=targets))
    lorakit.load_adapter(b, tmp_path / "a")
    lorakit.save_adapter(b, tmp_path / "b")
    c = lorakit.load_adapter(tiny_lm(), tmp_path / "b")
    with torch.no_grad():
        assert torch.allclose(c(IDS), a(IDS), atol=1e-6)
