"""Cross-checks of lorakit.family against Hugging Face PEFT 0.21 on the same weights (notebook 13, section 8).

For every method PEFT has ((IA)³, VeRA, prompt tuning, prefix tuning, LN tuning) on a tiny Hugging Face
Llama built from a config (no download): (a) with the same weights lorakit's forward equals PEFT's;
(b) the trainable (and total) parameter counts are equal; (c) an adapter saved by lorakit loads in PEFT
with the same outputs, and (d) one saved by PEFT loads in lorakit with the same outputs. Plus: VeRA's shared
matrices equal PEFT's for the same seed; prompt and prefix tuning on the course TinyLM equal PEFT's on the
same model converted to a transformers Llama; LoRA+ parameter groups equal PEFT's; QDoRA equals PEFT's DoRA
on a bitsandbytes 4-bit base.

Random numbers PEFT draws while building layers: (IA)³ draws ``torch.randn`` for each vector and VeRA one
``randn(r)`` per layer, then overwrites them with constants (1; d_initial and 0), so the adapters are equal
without copying (lorakit does not draw them; only the global RNG state afterwards differs). Prompt tuning
(random and vocab-sampled init) and prefix tuning (with and without the MLP) draw their initial values in
PEFT's order, so the same seed gives the same adapter (tested). Everywhere else the tests give the adapters
random non-zero values (copied across) so that they change the output.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from builders import input_ids, logits, tiny_llama, tiny_lm  # noqa: E402
from peft import PeftModel, get_peft_model  # noqa: E402

import lorakit  # noqa: E402
from lorakit.family import (  # noqa: E402
    IA3Config,
    LNTuningConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    VeRAConfig,
    apply_ia3,
    apply_ln_tuning,
    apply_prefix_tuning,
    apply_prompt_tuning,
    apply_vera,
    load_family_adapter,
    loraplus_param_groups,
    save_family_adapter,
    tiny_lm_to_llama,
)
from lorakit.family.ia3 import ia3_layers  # noqa: E402
from lorakit.family.ln_tuning import ln_tuning_layers  # noqa: E402
from lorakit.family.vera import shared_projections, vera_layers  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]

TOL = 1e-5
PREFIX = "base_model.model."


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def randomize(params, seed: int = 4, scale: float = 0.3, around: float = 1.0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(around + scale * torch.randn(p.shape, generator=gen).to(p.dtype))


def peft_params(model, key: str) -> dict[str, torch.nn.Parameter]:
    """``{name in the base model: parameter}`` for PEFT parameters named ``...<key>.default``."""
    out = {}
    for name, p in model.named_parameters():
        if f".{key}.default" in name:
            out[name.removeprefix(PREFIX).split(f".{key}.default")[0]] = p
    return out


def ids_llama() -> torch.Tensor:
    return input_ids()


# ----------------------------------------------------------------------------------------------- (IA)^3
IA3_CASES = {
    "llama-default": IA3Config(),
    "q-and-down-regex": IA3Config(target_modules=r".*\.(q_proj|up_proj|down_proj)", feedforward_modules=r".*down_proj"),
    "no-ff": IA3Config(target_modules=["q_proj", "o_proj"], feedforward_modules=[]),
}


def peft_ia3(config: IA3Config):
    return peft.IA3Config(target_modules=config.target_modules, feedforward_modules=config.feedforward_modules)


def ia3_pair(config: IA3Config, seed: int = 4):
    base = tiny_llama()
    theirs = get_peft_model(copy.deepcopy(base), peft_ia3(config))
    ours = apply_ia3(copy.deepcopy(base), config)
    # same constant init: equal before any copy
    theirs_l = peft_params(theirs, "ia3_l")
    assert set(theirs_l) == set(ia3_layers(ours))
    for name, layer in ia3_layers(ours).items():
        assert torch.equal(layer.ia3_l, theirs_l[name]), name
    randomize(theirs_l[n] for n in sorted(theirs_l))
    with torch.no_grad():
        for name, layer in ia3_layers(ours).items():
            layer.ia3_l.copy_(theirs_l[name])
    return base, ours, theirs


@pytest.mark.parametrize("case", list(IA3_CASES))
def test_ia3_forward_counts_merge_equal_peft(case):
    config = IA3_CASES[case]
    base, ours, theirs = ia3_pair(config)
    ids = ids_llama()
    with torch.no_grad():
        want, got, plain = logits(theirs, ids), logits(ours, ids), logits(base, ids)
    assert max_diff(want, plain) > 1e-2
    assert max_diff(want, got) <= TOL
    assert lorakit.trainable_parameters(ours) == theirs.get_nb_trainable_parameters()
    ff = {n: m.is_feedforward for n, m in ia3_layers(ours).items()}
    for name, module in theirs.named_modules():
        if type(module).__module__.startswith("peft.tuners.ia3") and hasattr(module, "is_feedforward"):
            assert ff[name.removeprefix(PREFIX)] == module.is_feedforward
    with torch.no_grad():
        lorakit.merge_lora(ours)
        merged = theirs.merge_and_unload()
        for name, layer in ia3_layers(ours).items():
            assert max_diff(layer.base.weight, merged.get_submodule(name).weight) <= 1e-6
        assert max_diff(logits(ours, ids), logits(merged, ids)) <= TOL


@pytest.mark.parametrize("case", list(IA3_CASES))
def test_ia3_save_load_both_ways(tmp_path, case):
    config = IA3_CASES[case]
    base, ours, theirs = ia3_pair(config)
    ids = ids_llama()
    save_family_adapter(ours, tmp_path / "ours")
    peft_loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    theirs.save_pretrained(tmp_path / "theirs")
    ours_loaded = load_family_adapter(copy.deepcopy(base), tmp_path / "theirs")
    with torch.no_grad():
        want = logits(theirs, ids)
        assert max_diff(logits(peft_loaded, ids), want) <= TOL
        assert max_diff(logits(ours_loaded, ids), want) <= TOL


def test_ia3_bf16_base_close_to_peft():
    base = tiny_llama().to(torch.bfloat16)
    theirs = get_peft_model(copy.deepcopy(base), peft_ia3(IA3Config()))
    ours = apply_ia3(copy.deepcopy(base), IA3Config())
    theirs_l = peft_params(theirs, "ia3_l")
    randomize(theirs_l[n] for n in sorted(theirs_l))
    with torch.no_grad():
        for name, layer in ia3_layers(ours).items():
            assert layer.ia3_l.dtype == theirs_l[name].dtype == torch.float32  # adapters stay fp32, as PEFT's
            layer.ia3_l.copy_(theirs_l[name])
        assert max_diff(logits(ours, ids_llama()), logits(theirs, ids_llama())) == 0.0


# ----------------------------------------------------------------------------------------------- VeRA
VERA_TARGETS = {"qv": ["q_proj", "v_proj"], "all-linear": "all-linear",
                "mixed-shapes": ["k_proj", "up_proj", "down_proj"]}


def peft_vera(config: VeRAConfig):
    return peft.VeraConfig(r=config.r, target_modules=config.target_modules,
                           projection_prng_key=config.projection_prng_key, save_projection=config.save_projection,
                           d_initial=config.d_initial)


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("target", list(VERA_TARGETS))
def test_vera_shared_matrices_equal_peft_for_the_same_seed(target, seed):
    config = VeRAConfig(r=16, target_modules=VERA_TARGETS[target], projection_prng_key=seed)
    base = tiny_llama()
    theirs = get_peft_model(copy.deepcopy(base), peft_vera(config))
    ours = apply_vera(copy.deepcopy(base), config)
    proj = shared_projections(ours)
    assert torch.equal(proj.vera_A, theirs.base_model.vera_A["default"])
    assert torch.equal(proj.vera_B, theirs.base_model.vera_B["default"])
    # d = 0.1 and b = 0 in both, so the two models are equal before anything is copied
    ids = ids_llama()
    with torch.no_grad():
        assert max_diff(logits(ours, ids), logits(theirs, ids)) <= TOL
    assert lorakit.trainable_parameters(ours) == theirs.get_nb_trainable_parameters()


def vera_pair(target="all-linear", save_projection=True):
    config = VeRAConfig(r=16, target_modules=VERA_TARGETS[target], save_projection=save_projection)
    base = tiny_llama()
    theirs = get_peft_model(copy.deepcopy(base), peft_vera(config))
    ours = apply_vera(copy.deepcopy(base), config)
    b, d = peft_params(theirs, "vera_lambda_b"), peft_params(theirs, "vera_lambda_d")
    randomize((b[n] for n in sorted(b)), seed=5, around=0.0)
    randomize((d[n] for n in sorted(d)), seed=6, around=0.1)
    with torch.no_grad():
        for name, layer in vera_layers(ours).items():
            layer.vera_lambda_b.copy_(b[name])
            layer.vera_lambda_d.copy_(d[name])
    return base, ours, theirs


@pytest.mark.parametrize("target", list(VERA_TARGETS))
def test_vera_forward_and_merge_equal_peft(target):
    base, ours, theirs = vera_pair(target)
    ids = ids_llama()
    with torch.no_grad():
        want, plain = logits(theirs, ids), logits(base, ids)
        assert max_diff(want, plain) > 1e-2
        assert max_diff(logits(ours, ids), want) <= TOL
        lorakit.merge_lora(ours)
        merged = theirs.merge_and_unload()
        for name, layer in vera_layers(ours).items():
            assert max_diff(layer.base.weight, merged.get_submodule(name).weight) <= 1e-6
        assert max_diff(logits(ours, ids), logits(merged, ids)) <= TOL


@pytest.mark.parametrize("save_projection", [True, False])
def test_vera_save_load_both_ways(tmp_path, save_projection):
    base, ours, theirs = vera_pair(save_projection=save_projection)
    ids = ids_llama()
    save_family_adapter(ours, tmp_path / "ours")
    peft_loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    theirs.save_pretrained(tmp_path / "theirs")
    ours_loaded = load_family_adapter(copy.deepcopy(base), tmp_path / "theirs")
    with torch.no_grad():
        want = logits(theirs, ids)
        assert max_diff(logits(peft_loaded, ids), want) <= TOL
        assert max_diff(logits(ours_loaded, ids), want) <= TOL


# ----------------------------------------------------------------------------------------------- LN tuning
def test_ln_tuning_forward_counts_save_load_equal_peft(tmp_path):
    base = tiny_llama()
    theirs = get_peft_model(copy.deepcopy(base), peft.LNTuningConfig(target_modules=LNTuningConfig().target_modules))
    ours = apply_ln_tuning(copy.deepcopy(base), LNTuningConfig())
    assert lorakit.trainable_parameters(ours) == theirs.get_nb_trainable_parameters()
    theirs_ln = {n.removeprefix(PREFIX).split(".ln_tuning_layers")[0]: p for n, p in theirs.named_parameters()
                 if "ln_tuning_layers.default" in n}
    assert set(theirs_ln) == set(ln_tuning_layers(ours))
    randomize(theirs_ln[n] for n in sorted(theirs_ln))
    with torch.no_grad():
        for name, layer in ln_tuning_layers(ours).items():
            layer.ln_tuning_layers.weight.copy_(theirs_ln[name])
    ids = ids_llama()
    with torch.no_grad():
        want = logits(theirs, ids)
        assert max_diff(want, logits(base, ids)) > 1e-2
        assert max_diff(logits(ours, ids), want) <= TOL
    save_family_adapter(ours, tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    with torch.no_grad():
        assert max_diff(logits(PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours"), ids), want) <= TOL
        assert max_diff(logits(load_family_adapter(copy.deepcopy(base), tmp_path / "theirs"), ids), want) <= TOL
        lorakit.merge_lora(ours)
        assert max_diff(logits(ours, ids), want) <= TOL


# ----------------------------------------------------------------------------------------------- prompt tuning
@pytest.mark.parametrize("init", ["random", "sample_vocab"])
def test_prompt_tuning_same_seed_same_prompt_and_logits(init):
    base, ids = tiny_llama(), ids_llama()
    torch.manual_seed(11)
    theirs = get_peft_model(copy.deepcopy(base), peft.PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=5, prompt_tuning_init=init.upper())).eval()
    torch.manual_seed(11)
    ours = apply_prompt_tuning(copy.deepcopy(base), PromptTuningConfig(5, init=init)).eval()
    assert torch.equal(ours.prompt_embeddings, theirs.prompt_encoder["default"].embedding.weight)
    assert lorakit.trainable_parameters(ours) == theirs.get_nb_trainable_parameters()
    with torch.no_grad():
        want = logits(theirs, ids)[:, 5:]  # PEFT returns the virtual positions' logits too
        assert max_diff(logits(ours, ids), want) <= TOL
        assert max_diff(want, logits(base, ids)) > 1e-2


def test_prompt_tuning_attention_mask_and_labels_as_peft():
    base, ids = tiny_llama(), ids_llama()
    torch.manual_seed(3)
    theirs = get_peft_model(copy.deepcopy(base), peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    torch.manual_seed(3)
    ours = apply_prompt_tuning(copy.deepcopy(base), PromptTuningConfig(4))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding in the first row
    labels = ids.clone()
    theirs.eval(), ours.eval()
    with torch.no_grad():
        a = theirs(input_ids=ids, attention_mask=mask, labels=labels)
        b = ours(ids, attention_mask=mask, labels=labels)
    assert max_diff(a.logits[:, 4:], b.logits) <= TOL
    assert abs(a.loss.item() - b.loss.item()) <= 1e-5


def test_prompt_tuning_save_load_both_ways(tmp_path):
    base, ids = tiny_llama(), ids_llama()
    torch.manual_seed(0)
    ours = apply_prompt_tuning(copy.deepcopy(base), PromptTuningConfig(6, init="sample_vocab"))
    randomize([ours.prompt_embeddings], seed=2, scale=0.5, around=0.0)
    save_family_adapter(ours, tmp_path / "ours")
    cfg = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "PROMPT_TUNING" and cfg["prompt_tuning_init"] == "SAMPLE_VOCAB"
    theirs = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    with torch.no_grad():
        want = logits(ours.eval(), ids)
        assert max_diff(logits(theirs, ids)[:, 6:], want) <= TOL
    theirs.save_pretrained(tmp_path / "theirs")
    back = load_family_adapter(copy.deepcopy(base), tmp_path / "theirs").eval()
    with torch.no_grad():
        assert max_diff(logits(back, ids), want) <= TOL


def test_prompt_tuning_on_tiny_lm_equals_peft_on_the_same_model_as_llama():
    model = tiny_lm()
    llama = tiny_lm_to_llama(model)
    ids = torch.randint(0, 32, (3, 9), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    theirs = get_peft_model(llama, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4,
                                                           prompt_tuning_init="SAMPLE_VOCAB")).eval()
    torch.manual_seed(5)
    ours = apply_prompt_tuning(model, PromptTuningConfig(4, init="sample_vocab")).eval()
    assert torch.equal(ours.prompt_embeddings, theirs.prompt_encoder["default"].embedding.weight)
    with torch.no_grad():
        assert max_diff(ours(ids), theirs(input_ids=ids).logits[:, 4:]) <= TOL


# ----------------------------------------------------------------------------------------------- prefix tuning
@pytest.mark.parametrize("projection", [False, True])
def test_prefix_tuning_same_seed_same_prefix_logits_counts(projection):
    base, ids = tiny_llama(), ids_llama()
    torch.manual_seed(21)
    theirs = get_peft_model(copy.deepcopy(base), peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=5, prefix_projection=projection, encoder_hidden_size=24)).eval()
    torch.manual_seed(21)
    ours = apply_prefix_tuning(copy.deepcopy(base), PrefixTuningConfig(5, prefix_projection=projection,
                                                                      encoder_hidden_size=24)).eval()
    # GQA: PEFT's token_dim is kv_heads * head_dim = 2 * 8, its num_attention_heads the kv heads
    cfg = theirs.peft_config["default"]
    assert (ours.num_layers, ours.token_dim, ours.num_heads) == (cfg.num_layers, cfg.token_dim, cfg.num_attention_heads)
    assert lorakit.trainable_parameters(ours) == theirs.get_nb_trainable_parameters()
    with torch.no_grad():
        assert torch.equal(ours.prefix_encoder(), theirs.get_prompt_embedding_to_save("default"))
        want = logits(theirs, ids)
        assert max_diff(want, logits(base, ids)) > 1e-2
        assert max_diff(logits(ours, ids), want) <= TOL


@pytest.mark.parametrize("projection", [False, True])
def test_prefix_tuning_save_load_both_ways(tmp_path, projection):
    base, ids = tiny_llama(), ids_llama()
    torch.manual_seed(1)
    theirs = get_peft_model(copy.deepcopy(base), peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=3, prefix_projection=projection)).eval()
    torch.manual_seed(1)
    ours = apply_prefix_tuning(copy.deepcopy(base), PrefixTuningConfig(3, prefix_projection=projection)).eval()
    with torch.no_grad():
        want = logits(theirs, ids)
    save_family_adapter(ours, tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    peft_loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    ours_loaded = load_family_adapter(copy.deepcopy(base), tmp_path / "theirs").eval()
    with torch.no_grad():
        assert max_diff(logits(peft_loaded, ids), want) <= TOL
        assert max_diff(logits(ours_loaded, ids), want) <= TOL


def test_prefix_tuning_attention_mask_as_peft():
    base, ids = tiny_llama(), ids_llama()
    torch.manual_seed(2)
    theirs = get_peft_model(copy.deepcopy(base), peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    torch.manual_seed(2)
    ours = apply_prefix_tuning(copy.deepcopy(base), PrefixTuningConfig(3))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    theirs.eval(), ours.eval()
    with torch.no_grad():
        assert max_diff(theirs(input_ids=ids, attention_mask=mask).logits, ours(ids, attention_mask=mask).logits) <= TOL


def test_prefix_tuning_on_tiny_lm_equals_peft_on_the_same_model_as_llama():
    model = tiny_lm()
    llama = tiny_lm_to_llama(model)
    ids = torch.randint(0, 32, (3, 9), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(8)
    theirs = get_peft_model(llama, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)).eval()
    torch.manual_seed(8)
    ours = apply_prefix_tuning(model, PrefixTuningConfig(4)).eval()
    with torch.no_grad():
        assert torch.equal(ours.prefix_encoder(), theirs.get_prompt_embedding_to_save("default"))
        assert max_diff(ours(ids), theirs(input_ids=ids).logits) <= TOL


# ----------------------------------------------------------------------------------------------- LoRA+
@pytest.mark.parametrize("use_dora", [False, True])
def test_loraplus_groups_equal_peft_on_the_same_model(use_dora):
    from peft.optimizers import create_loraplus_optimizer as peft_loraplus

    model = lorakit.apply_lora(tiny_llama(), lorakit.LoRAConfig(r=4, target_modules="all-linear", use_dora=use_dora))
    model.model.norm.weight.requires_grad_(True)  # a 1-D non-LoRA parameter: PEFT puts it with B
    theirs = peft_loraplus(model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16, loraplus_weight_decay=0.1)
    ours = loraplus_param_groups(model, lr=1e-3, loraplus_lr_ratio=16, loraplus_weight_decay=0.1)
    assert len(theirs.param_groups) == len(ours) == 4
    for g_theirs, g_ours in zip(theirs.param_groups, ours, strict=True):
        assert [id(p) for p in g_theirs["params"]] == [id(p) for p in g_ours["params"]]
        assert g_theirs["lr"] == g_ours["lr"] and g_theirs["weight_decay"] == g_ours["weight_decay"]
    assert ours[2]["lr"] == pytest.approx(16e-3) and any(n.endswith("lora_B") for n in ours[2]["names"])


def test_loraplus_groups_match_peft_on_peft_model_by_name():
    from peft.optimizers import create_loraplus_optimizer as peft_loraplus

    base = tiny_llama()
    theirs_model = get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, target_modules="all-linear", use_dora=True))
    ours_model = lorakit.apply_lora(copy.deepcopy(base), lorakit.LoRAConfig(r=4, target_modules="all-linear",
                                                                           use_dora=True))
    theirs = peft_loraplus(theirs_model, torch.optim.AdamW, lr=2e-4, loraplus_lr_ratio=8)
    ours = loraplus_param_groups(ours_model, lr=2e-4, loraplus_lr_ratio=8)
    names = {id(p): n for n, p in theirs_model.named_parameters()}

    def canonical(name: str) -> str:
        return (name.removeprefix(PREFIX).replace(".default.weight", "").replace(".default", "")
                .replace(".weight", "").replace("lora_magnitude_vector", "magnitude"))

    for g_theirs, g_ours in zip(theirs.param_groups, ours, strict=True):
        assert sorted(canonical(names[id(p)]) for p in g_theirs["params"]) == sorted(g_ours["names"])
        assert g_theirs["lr"] == pytest.approx(g_ours["lr"])


# ----------------------------------------------------------------------------------------------- QDoRA
def test_qdora_equals_peft_dora_on_a_bitsandbytes_4bit_base():
    pytest.importorskip("bitsandbytes")
    from torch import nn

    from lorakit.family import QDoRALinear
    from lorakit.qlora import bnb_linear4bit_from_linear

    class OneLayer(nn.Module):
        def __init__(self, proj):
            super().__init__()
            self.proj = proj
            self.is_loaded_in_4bit = True

        def forward(self, x):
            return self.proj(x)

    torch.manual_seed(0)
    linear = nn.Linear(128, 64)
    with torch.no_grad():
        linear.weight.normal_(0, 0.05)
    theirs = get_peft_model(OneLayer(bnb_linear4bit_from_linear(copy.deepcopy(linear))),
                            peft.LoraConfig(r=4, lora_alpha=8, target_modules=["proj"], use_dora=True))
    player = theirs.base_model.model.proj
    x = torch.randn(5, 128, generator=torch.Generator().manual_seed(1))
    initial_magnitude = player.lora_magnitude_vector["default"].weight.detach().clone()
    with torch.no_grad():
        player.lora_B["default"].weight.copy_(0.05 * torch.randn(64, 4, generator=torch.Generator().manual_seed(2)))
        player.lora_magnitude_vector["default"].weight.mul_(1.1)
    for backend in ("bitsandbytes", "lorakit"):
        ours = QDoRALinear(copy.deepcopy(linear), r=4, alpha=8, backend=backend)
        # m starts at the row norms of the dequantized weight, as PEFT's (same NF4 bytes in both backends)
        assert torch.allclose(ours.magnitude, initial_magnitude, rtol=1e-5)
        with torch.no_grad():
            ours.lora_A.copy_(player.lora_A["default"].weight)
            ours.lora_B.copy_(player.lora_B["default"].weight)
            ours.magnitude.copy_(player.lora_magnitude_vector["default"].weight)
            want, got = theirs(x), ours(x)
        scale = want.abs().max().item()
        assert max_diff(got, want) <= (1e-5 if backend == "bitsandbytes" else 2e-2) * scale, backend
