"""Cross-checks of lorakit's DoRA against Hugging Face PEFT's ``use_dora=True`` on the same models.

On a tiny LLaMA built from a config and on the course's TinyLM: with identical A, B and magnitude,
lorakit's forward, gradients, merge and unmerge equal PEFT's; PEFT loads what lorakit saves and the other
way round, including the full round trip lorakit -> PEFT -> lorakit. Every adapter gets a random nonzero
B and a magnitude moved away from ``||W0||`` so that both halves of DoRA matter.
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
from safetensors.torch import load_file  # noqa: E402

import lorakit  # noqa: E402
from lorakit.dora import DoRALinear  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*"),
]

TOL = 1e-5
TINY_ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def peft_dora(base, target, rslora=False, r=4, alpha=8, dropout=0.0):
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target, use_rslora=rslora,
                     use_dora=True)
    return get_peft_model(copy.deepcopy(base), cfg)


def lorakit_dora(base, target, rslora=False, r=4, alpha=8, dropout=0.0):
    cfg = lorakit.LoRAConfig(r=r, alpha=alpha, dropout=dropout, target_modules=target, rslora=rslora, use_dora=True)
    return lorakit.apply_lora(copy.deepcopy(base), cfg)


def randomize_peft(model: torch.nn.Module, seed: int = 3) -> None:
    """Random B and a magnitude scaled by 1 + 0.2 N(0, 1) (so m differs from ||W0 + sBA||)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in sorted(peft_layers(model).items()):
            b, m = layer.lora_B["default"].weight, layer.lora_magnitude_vector["default"].weight
            b.copy_((torch.randn(b.shape, generator=gen) * 0.2).to(b.dtype))
            m.mul_(1 + 0.2 * torch.randn(m.shape, generator=gen).to(m.dtype))


def randomize_lorakit(model: torch.nn.Module, seed: int = 2) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in sorted(lorakit.lora_layers(model).items()):
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=gen) * 0.2)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.2)
            layer.magnitude.mul_(1 + 0.2 * torch.randn(layer.magnitude.shape, generator=gen))


def copy_peft_into_lorakit(theirs_model: torch.nn.Module, ours_model: torch.nn.Module) -> None:
    ours, theirs = lorakit.lora_layers(ours_model), peft_layers(theirs_model)
    assert set(ours) == set(theirs)
    with torch.no_grad():
        for name, layer in ours.items():
            assert isinstance(layer, DoRALinear)
            layer.lora_A.copy_(theirs[name].lora_A["default"].weight)
            layer.lora_B.copy_(theirs[name].lora_B["default"].weight)
            layer.magnitude.copy_(theirs[name].lora_magnitude_vector["default"].weight)


def same_weight_pair(base, target, rslora=False, **kw):
    theirs = peft_dora(base, target, rslora, **kw)
    randomize_peft(theirs)
    ours = lorakit_dora(base, target, rslora, **kw)
    copy_peft_into_lorakit(theirs, ours)
    return ours, theirs


# ---------------------------------------------------------------- initialisation and the file format


def test_magnitude_init_and_counts_equal_peft():
    base = tiny_llama()
    ours, theirs = lorakit_dora(base, "all-linear"), peft_dora(base, "all-linear")
    theirs_layers = peft_layers(theirs)
    for name, layer in lorakit.lora_layers(ours).items():
        want = theirs_layers[name].lora_magnitude_vector["default"].weight
        assert layer.magnitude.shape == want.shape == (layer.out_features,)
        assert torch.allclose(layer.magnitude, want, rtol=1e-6, atol=0)
    assert lorakit.trainable_parameters(ours) == theirs.get_nb_trainable_parameters()


def test_saved_keys_equal_peft_keys(tmp_path):
    base = tiny_llama()
    lorakit.save_adapter(lorakit_dora(base, TARGETS["qv"]), tmp_path / "ours")
    peft_dora(base, TARGETS["qv"]).save_pretrained(tmp_path / "theirs")
    ours, theirs = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("ours", "theirs"))
    assert set(ours) == set(theirs)
    assert any(k.endswith(".lora_magnitude_vector") for k in ours)
    for key in ours:
        assert ours[key].shape == theirs[key].shape and ours[key].dtype == theirs[key].dtype, key
    assert json.loads((tmp_path / "ours" / "adapter_config.json").read_text())["use_dora"] is True


# ---------------------------------------------------------------- same weights: forward, merge, unmerge, gradients


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("target", list(TARGETS))
def test_same_weights_forward_merge_unmerge(target, rslora):
    base, ids = tiny_llama(), input_ids()
    ours, theirs = same_weight_pair(base, TARGETS[target], rslora)
    ours.eval(), theirs.eval()
    originals = {n: layer.base.weight.detach().clone() for n, layer in lorakit.lora_layers(ours).items()}
    with torch.no_grad():
        want = logits(theirs, ids)
        assert max_diff(want, logits(base, ids)) > 1e-2  # the adapter matters
        assert max_diff(logits(ours, ids), want) <= TOL
        lorakit.merge_lora(ours)
        merged_peft = theirs.merge_and_unload()
        for name, layer in lorakit.lora_layers(ours).items():
            assert layer.merged
            assert max_diff(layer.base.weight, merged_peft.get_submodule(name).weight) <= 1e-6, name
        assert max_diff(logits(ours, ids), logits(merged_peft, ids)) <= TOL
        lorakit.unmerge_lora(ours)
        for name, layer in lorakit.lora_layers(ours).items():
            assert not layer.merged
            assert max_diff(layer.base.weight, originals[name]) <= 1e-6, name
        assert max_diff(logits(ours, ids), want) <= TOL
        dense = lorakit.merge_and_unload(ours)
        assert not lorakit.lora_layers(dense)
        assert max_diff(logits(dense, ids), logits(merged_peft, ids)) <= TOL


@pytest.mark.parametrize("rslora", [False, True])
def test_gradients_of_A_B_and_magnitude_match_peft(rslora):
    base, ids, labels = tiny_llama(), input_ids(), input_ids(seed=5)
    ours, theirs = same_weight_pair(base, "all-linear", rslora)
    for model in (ours, theirs):
        model.train()
        out = logits(model, ids)
        torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), labels.reshape(-1)).backward()
    theirs_layers = peft_layers(theirs)
    for name, layer in lorakit.lora_layers(ours).items():
        t = theirs_layers[name]
        pairs = ((layer.lora_A.grad, t.lora_A["default"].weight.grad),
                 (layer.lora_B.grad, t.lora_B["default"].weight.grad),
                 (layer.magnitude.grad, t.lora_magnitude_vector["default"].weight.grad))
        for got, want in pairs:
            assert got is not None and want is not None
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-6), name
    assert all(p.grad is None for n, p in ours.named_parameters() if "lora_" not in n and "magnitude" not in n)


def test_dropout_in_training_matches_peft_with_the_same_seed():
    """PEFT's DoRA dropout semantics (eq. 3 of lorakit.dora): same RNG draws -> same output and gradients."""
    base, ids, labels = tiny_llama(), input_ids(), input_ids(seed=5)
    ours, theirs = same_weight_pair(base, "all-linear", dropout=0.3)
    outs = []
    for model in (ours, theirs):
        model.train()
        torch.manual_seed(11)
        out = logits(model, ids)
        torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), labels.reshape(-1)).backward()
        outs.append(out.detach())
    assert max_diff(outs[0], outs[1]) <= TOL
    with torch.no_grad():
        assert max_diff(outs[0], logits(ours.eval(), ids)) > 1e-3  # dropout was active
    theirs_layers = peft_layers(theirs)
    for name, layer in lorakit.lora_layers(ours).items():
        want = theirs_layers[name].lora_magnitude_vector["default"].weight.grad
        assert torch.allclose(layer.magnitude.grad, want, rtol=1e-4, atol=1e-6), name


def test_bf16_base_close_to_peft():
    base, ids = tiny_llama().to(torch.bfloat16), input_ids()
    ours, theirs = same_weight_pair(base, "all-linear")
    for layer in lorakit.lora_layers(ours).values():  # fp32 adapters and magnitude on a bf16 base, as PEFT
        assert layer.magnitude.dtype == layer.lora_A.dtype == torch.float32
    for layer in peft_layers(theirs).values():
        assert layer.lora_magnitude_vector["default"].weight.dtype == torch.float32
    with torch.no_grad():
        want, got = logits(theirs.eval(), ids), logits(ours.eval(), ids)
    assert got.dtype == want.dtype == torch.bfloat16
    assert max_diff(want, got) <= 2e-2 * max(1.0, want.float().abs().max().item())


# ---------------------------------------------------------------- files, both directions, and the round trip


@pytest.mark.parametrize("target", list(TARGETS))
def test_round_trip_lorakit_peft_lorakit(tmp_path, target):
    base, ids = tiny_llama(), input_ids()
    ours = lorakit_dora(base, TARGETS[target])
    randomize_lorakit(ours)
    lorakit.save_adapter(ours, tmp_path / "ours")
    theirs = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    assert theirs.peft_config["default"].use_dora is True
    assert set(peft_layers(theirs)) == set(lorakit.lora_layers(ours))
    with torch.no_grad():
        want = logits(ours.eval(), ids)
        assert max_diff(want, logits(base, ids)) > 1e-2
        assert max_diff(want, logits(theirs, ids)) <= TOL
    theirs.save_pretrained(tmp_path / "theirs")
    back = lorakit.load_adapter(copy.deepcopy(base), tmp_path / "theirs")
    assert back.lora_config.use_dora is True
    assert all(isinstance(layer, DoRALinear) for layer in lorakit.lora_layers(back).values())
    with torch.no_grad():
        assert torch.equal(logits(back.eval(), ids), want)  # identical tensors came back: identical logits


def test_lorakit_loads_peft_adapter_and_hot_swaps(tmp_path):
    base, ids = tiny_llama(), input_ids()
    adapters = []
    for seed in (3, 4):
        theirs = peft_dora(base, TARGETS["qv"]).eval()
        randomize_peft(theirs, seed=seed)
        theirs.save_pretrained(tmp_path / str(seed))
        adapters.append(theirs)
    ours = lorakit.load_adapter(copy.deepcopy(base), tmp_path / "3")
    with torch.no_grad():
        assert max_diff(logits(ours, ids), logits(adapters[0], ids)) <= TOL
        lorakit.load_adapter(ours, tmp_path / "4")  # hot swap: A, B and the magnitude are replaced
        assert max_diff(logits(ours, ids), logits(adapters[1], ids)) <= TOL


@pytest.mark.parametrize("target", [["q_proj", "v_proj"], TINY_ALL7], ids=["qv", "all7"])
def test_tinylm_with_peft(tmp_path, target):
    base, ids = tiny_lm(), input_ids(vocab=32)
    ours = lorakit_dora(base, target)
    randomize_lorakit(ours)
    lorakit.save_adapter(ours, tmp_path / "ours")
    theirs = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    with torch.no_grad():
        assert max_diff(logits(ours.eval(), ids), logits(base, ids)) > 1e-3
        assert max_diff(logits(ours, ids), logits(theirs, ids)) <= TOL
    theirs.save_pretrained(tmp_path / "theirs")
    back = lorakit.load_adapter(copy.deepcopy(base), tmp_path / "theirs")
    with torch.no_grad():
        assert max_diff(logits(back.eval(), ids), logits(theirs, ids)) <= TOL
    ours, theirs = same_weight_pair(base, target)
    with torch.no_grad():
        assert max_diff(logits(ours.eval(), ids), logits(theirs.eval(), ids)) <= TOL
        merged = theirs.merge_and_unload()
        lorakit.merge_lora(ours)
        assert max_diff(logits(ours, ids), logits(merged, ids)) <= TOL


def test_dora_adapter_into_a_lora_model_and_back_is_refused(tmp_path):
    base = tiny_llama()
    lorakit.save_adapter(lorakit_dora(base, TARGETS["qv"]), tmp_path / "dora")
    lora_model = lorakit.apply_lora(copy.deepcopy(base), lorakit.LoRAConfig(r=4, target_modules=TARGETS["qv"]))
    with pytest.raises(ValueError, match="use_dora=True but the model's layer .* is a LoRALinear"):
        lorakit.load_adapter(lora_model, tmp_path / "dora")
    lorakit.save_adapter(lora_model, tmp_path / "lora")
    dora_model = lorakit_dora(base, TARGETS["qv"])
    with pytest.raises(ValueError, match="use_dora=False but the model's layer .* is a DoRALinear"):
        lorakit.load_adapter(dora_model, tmp_path / "lora")
