"""Bad input to lorakit.family: a clear TypeError/ValueError naming the argument, and the model unchanged.

Every case builds a fresh model, snapshots it (tests/snapshot.py), makes the bad call, checks the error type
and that its message names the problem, then checks that nothing observable about the model changed.
"""

from __future__ import annotations

import json

import pytest
import torch
from builders import tiny_lm
from snapshot import assert_unchanged, snapshot
from torch import nn

import lorakit
from lorakit.family import (
    AdapterConfig,
    BitFitConfig,
    GaLoreAdamW,
    IA3Config,
    LNTuningConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    VeRAConfig,
    apply_adapters,
    apply_bitfit,
    apply_ia3,
    apply_ln_tuning,
    apply_prefix_tuning,
    apply_prompt_tuning,
    apply_qdora,
    apply_vera,
    create_loraplus_optimizer,
    galore_param_groups,
    load_family_adapter,
    load_qdora_adapter,
    loraplus_param_groups,
    prefix_cache_bytes,
    save_family_adapter,
    vera_projections,
)
from lorakit.family.compare import build, fastest_interleaved

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning")]


def lora_model():
    return lorakit.apply_lora(tiny_lm(), lorakit.LoRAConfig())


def ia3_model():
    return apply_ia3(tiny_lm())


# (case id, model factory, call(model), exception, message pattern)
MODEL_CASES = [
    # ---- (IA)^3
    ("ia3-config-type", tiny_lm, lambda m: apply_ia3(m, {"target_modules": ["k_proj"]}), TypeError, "config must be"),
    ("ia3-model-type", tiny_lm, lambda m: apply_ia3("model"), TypeError, "model must be"),
    ("ia3-no-match", tiny_lm, lambda m: apply_ia3(m, IA3Config(["nope"], [])), ValueError, "matched no"),
    ("ia3-non-linear", tiny_lm, lambda m: apply_ia3(m, IA3Config(["embed_tokens"], [])), ValueError, "only nn.Linear"),
    ("ia3-ff-regex-not-target", tiny_lm,
     lambda m: apply_ia3(m, IA3Config(r".*k_proj", r".*up_proj")), ValueError, "feedforward modules must be targets"),
    ("ia3-on-lora", lora_model, lambda m: apply_ia3(m), ValueError, "stack"),
    ("ia3-twice", ia3_model, lambda m: apply_ia3(m), ValueError, "stack"),
    # ---- VeRA
    ("vera-config-type", tiny_lm, lambda m: apply_vera(m, IA3Config()), TypeError, "config must be a VeRAConfig"),
    ("vera-no-match", tiny_lm, lambda m: apply_vera(m, VeRAConfig(target_modules=["x"])), ValueError, "matched no"),
    ("vera-on-ia3", ia3_model, lambda m: apply_vera(m), ValueError, "stack"),
    ("vera-lm-head-regex-norm", tiny_lm, lambda m: apply_vera(m, VeRAConfig(target_modules=r"norm")), ValueError,
     "only nn.Linear"),
    # ---- BitFit
    ("bitfit-no-biases", tiny_lm, lambda m: apply_bitfit(m), ValueError, "add_missing_biases"),
    ("bitfit-config-type", tiny_lm, lambda m: apply_bitfit(m, "all"), TypeError, "config must be"),
    ("bitfit-no-match", tiny_lm, lambda m: apply_bitfit(m, BitFitConfig(["nothing"], True)), ValueError, "matched no"),
    ("bitfit-on-lora", lora_model, lambda m: apply_bitfit(m, BitFitConfig(add_missing_biases=True)), ValueError,
     "stack"),
    # ---- LN tuning
    ("ln-non-norm", tiny_lm, lambda m: apply_ln_tuning(m, LNTuningConfig(["q_proj"])), ValueError, "only"),
    ("ln-no-match", tiny_lm, lambda m: apply_ln_tuning(m, LNTuningConfig(["layer_norm_x"])), ValueError, "matched no"),
    ("ln-config-type", tiny_lm, lambda m: apply_ln_tuning(m, ["norm"]), TypeError, "config must be"),
    # ---- adapters
    ("adapters-config-type", tiny_lm, lambda m: apply_adapters(m, "houlsby"), TypeError, "config must be"),
    ("adapters-no-match", tiny_lm, lambda m: apply_adapters(m, AdapterConfig(target_modules=["x"])), ValueError,
     "matched no"),
    ("adapters-on-ia3", ia3_model, lambda m: apply_adapters(m), ValueError, "stack"),
    ("adapters-merge", lambda: apply_adapters(tiny_lm()), lambda m: lorakit.merge_lora(m), ValueError,
     "cannot be merged"),
    # ---- prompt tuning
    ("prompt-config-type", tiny_lm, lambda m: apply_prompt_tuning(m, 8), TypeError, "config must be"),
    ("prompt-too-long-for-tinylm", tiny_lm, lambda m: apply_prompt_tuning(m, PromptTuningConfig(16)), ValueError,
     "max_seq_len"),
    ("prompt-text-without-tokenizer", tiny_lm,
     lambda m: apply_prompt_tuning(m, PromptTuningConfig(4, init="text", init_text="ab")), TypeError, "tokenizer"),
    ("prompt-text-out-of-vocab", tiny_lm,
     lambda m: apply_prompt_tuning(m, PromptTuningConfig(4, init="text", init_text="ab"), tokenizer=lambda s: [99]),
     ValueError, "outside the vocabulary"),
    ("prompt-text-empty-ids", tiny_lm,
     lambda m: apply_prompt_tuning(m, PromptTuningConfig(4, init="text", init_text="ab"), tokenizer=lambda s: []),
     ValueError, "no ids"),
    ("prompt-not-a-language-model", lambda: nn.Sequential(nn.Linear(3, 3)),
     lambda m: apply_prompt_tuning(m, PromptTuningConfig(2)), TypeError, "TinyLM or a Hugging Face"),
    ("prompt-on-lora", lora_model, lambda m: apply_prompt_tuning(m, PromptTuningConfig(2)), ValueError, "stack"),
    # ---- prefix tuning
    ("prefix-config-type", tiny_lm, lambda m: apply_prefix_tuning(m, PromptTuningConfig(2)), TypeError,
     "config must be a PrefixTuningConfig"),
    ("prefix-wrong-layers", tiny_lm, lambda m: apply_prefix_tuning(m, PrefixTuningConfig(2, num_layers=5)), ValueError,
     "num_layers=5"),
    ("prefix-wrong-token-dim", tiny_lm, lambda m: apply_prefix_tuning(m, PrefixTuningConfig(2, token_dim=8)),
     ValueError, "token_dim=8"),
    ("prefix-not-a-language-model", lambda: nn.Sequential(nn.Linear(3, 3)),
     lambda m: apply_prefix_tuning(m, PrefixTuningConfig(2)), TypeError, "TinyLM or a Hugging Face"),
    ("prefix-on-ia3", ia3_model, lambda m: apply_prefix_tuning(m, PrefixTuningConfig(2)), ValueError, "stack"),
    # ---- QDoRA
    ("qdora-config-type", tiny_lm, lambda m: apply_qdora(m, IA3Config()), TypeError, "config must be a LoRAConfig"),
    ("qdora-pissa", tiny_lm, lambda m: apply_qdora(m, lorakit.LoRAConfig(init="pissa")), ValueError, "pissa"),
    ("qdora-backend", tiny_lm, lambda m: apply_qdora(m, lorakit.LoRAConfig(), backend="cuda"), ValueError, "backend"),
    ("qdora-blocksize", tiny_lm, lambda m: apply_qdora(m, lorakit.LoRAConfig(), blocksize=3), ValueError, "blocksize"),
    ("qdora-compute-dtype", tiny_lm, lambda m: apply_qdora(m, lorakit.LoRAConfig(), compute_dtype="bf16"), TypeError,
     "compute_dtype"),
    ("qdora-on-lora", lora_model, lambda m: apply_qdora(m, lorakit.LoRAConfig()), ValueError, "stack"),
    # ---- LoRA+ and GaLore (they read the model; they must not change it)
    ("loraplus-no-trainable", lambda: tiny_lm().requires_grad_(False), lambda m: loraplus_param_groups(m, 1e-3, 16),
     ValueError, "no trainable"),
    ("loraplus-lr", lora_model, lambda m: loraplus_param_groups(m, -1e-3, 16), ValueError, "lr must be"),
    ("loraplus-lr-type", lora_model, lambda m: loraplus_param_groups(m, "1e-3", 16), TypeError, "lr must be"),
    ("loraplus-ratio", lora_model, lambda m: loraplus_param_groups(m, 1e-3, 0), ValueError, "loraplus_lr_ratio"),
    ("loraplus-ratio-nan", lora_model, lambda m: loraplus_param_groups(m, 1e-3, float("nan")), ValueError,
     "loraplus_lr_ratio"),
    ("loraplus-weight-decay", lora_model, lambda m: loraplus_param_groups(m, 1e-3, 16, -0.1), ValueError,
     "loraplus_weight_decay"),
    ("loraplus-optimizer-cls", lora_model,
     lambda m: create_loraplus_optimizer(m, "adamw", lr=1e-3, loraplus_lr_ratio=16), TypeError, "optimizer_cls"),
    ("galore-rank-type", tiny_lm, lambda m: galore_param_groups(m, 2.5), TypeError, "rank must be an int"),
    ("galore-rank", tiny_lm, lambda m: galore_param_groups(m, 0), ValueError, "rank must be a positive"),
    ("galore-gap", tiny_lm, lambda m: galore_param_groups(m, 4, update_proj_gap=0), ValueError, "update_proj_gap"),
    ("galore-scale", tiny_lm, lambda m: galore_param_groups(m, 4, scale=0.0), ValueError, "scale"),
    ("galore-targets", tiny_lm, lambda m: galore_param_groups(m, 4, target_modules=["nope"]), ValueError, "matched no"),
    ("galore-1d-in-rank-group", tiny_lm, lambda m: GaLoreAdamW([{"params": [m.norm.weight], "rank": 2}]), ValueError,
     "2-D"),
    ("galore-rank-too-big", tiny_lm,
     lambda m: GaLoreAdamW([{"params": [m.layers[0].self_attn.q_proj.weight], "rank": 64}]), ValueError,
     "exceeds min"),
    ("galore-lr", tiny_lm, lambda m: GaLoreAdamW(m.parameters(), lr=-1), ValueError, "lr must be"),
    ("galore-betas", tiny_lm, lambda m: GaLoreAdamW(m.parameters(), betas=(0.9, 1.0)), ValueError, "betas"),
    ("galore-betas-type", tiny_lm, lambda m: GaLoreAdamW(m.parameters(), betas=0.9), TypeError, "betas"),
    ("galore-eps", tiny_lm, lambda m: GaLoreAdamW(m.parameters(), eps=-1e-8), ValueError, "eps"),
    ("galore-weight-decay", tiny_lm, lambda m: GaLoreAdamW(m.parameters(), weight_decay=-1), ValueError,
     "weight_decay"),
    ("galore-proj-type", tiny_lm,
     lambda m: GaLoreAdamW([{"params": [m.layers[0].self_attn.q_proj.weight], "rank": 2, "proj_type": "full"}]),
     ValueError, "proj_type"),
    # ---- saving something that is not a family adapter
    ("save-plain-model", tiny_lm, lambda m: save_family_adapter(m, "/tmp/never-written-family"), ValueError,
     "no lorakit.family adapter"),
    ("save-lora-model", lora_model, lambda m: save_family_adapter(m, "/tmp/never-written-family"), ValueError,
     "lorakit.save_adapter"),
]


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_bad_call_raises_and_leaves_the_model_unchanged(case):
    _, factory, call, exc, pattern = case
    model = factory()
    before = snapshot(model)
    with pytest.raises(exc, match=pattern):
        call(model)
    assert_unchanged(model, before)


CONFIG_CASES = [
    ("ia3-targets-type", lambda: IA3Config(target_modules=3), TypeError, "target_modules"),
    ("ia3-targets-empty-string", lambda: IA3Config(target_modules=""), ValueError, "target_modules"),
    ("ia3-bad-regex", lambda: IA3Config(target_modules="(", feedforward_modules=[]), ValueError, "regex"),
    ("ia3-ff-not-subset", lambda: IA3Config(["k_proj"], ["down_proj"]), ValueError, "subset"),
    ("ia3-init-type", lambda: IA3Config(init_ia3_weights=1), TypeError, "init_ia3_weights"),
    ("vera-r-zero", lambda: VeRAConfig(r=0), ValueError, "r must be a positive"),
    ("vera-r-float", lambda: VeRAConfig(r=8.0), TypeError, "r must be an int"),
    ("vera-r-bool", lambda: VeRAConfig(r=True), TypeError, "r must be an int"),
    ("vera-key", lambda: VeRAConfig(projection_prng_key="0"), TypeError, "projection_prng_key"),
    ("vera-dropout", lambda: VeRAConfig(vera_dropout=1.0), ValueError, "vera_dropout"),
    ("vera-d-initial", lambda: VeRAConfig(d_initial=float("inf")), ValueError, "d_initial"),
    ("vera-save-projection", lambda: VeRAConfig(save_projection="yes"), TypeError, "save_projection"),
    ("bitfit-add-type", lambda: BitFitConfig(add_missing_biases=1), TypeError, "add_missing_biases"),
    ("adapter-kind", lambda: AdapterConfig(kind="lora"), ValueError, "kind must be one of"),
    ("adapter-bottleneck", lambda: AdapterConfig(bottleneck_size=0), ValueError, "bottleneck_size"),
    ("adapter-activation", lambda: AdapterConfig(activation="swish"), ValueError, "activation"),
    ("adapter-scaling", lambda: AdapterConfig(scaling=-1.0), ValueError, "scaling"),
    ("adapter-dropout", lambda: AdapterConfig(dropout=-0.1), ValueError, "dropout"),
    ("prompt-n-zero", lambda: PromptTuningConfig(0), ValueError, "num_virtual_tokens"),
    ("prompt-n-type", lambda: PromptTuningConfig("8"), TypeError, "num_virtual_tokens"),
    ("prompt-init", lambda: PromptTuningConfig(8, init="vocab"), ValueError, "init must be one of"),
    ("prompt-text-missing", lambda: PromptTuningConfig(8, init="text"), ValueError, "init_text"),
    ("prompt-text-type", lambda: PromptTuningConfig(8, init_text=3), TypeError, "init_text"),
    ("prefix-n", lambda: PrefixTuningConfig(-1), ValueError, "num_virtual_tokens"),
    ("prefix-projection-type", lambda: PrefixTuningConfig(4, prefix_projection="no"), TypeError, "prefix_projection"),
    ("prefix-init", lambda: PrefixTuningConfig(4, init_weights="ones"), ValueError, "init_weights"),
    ("prefix-heads", lambda: PrefixTuningConfig(4, token_dim=10, num_attention_heads=4), ValueError, "split"),
    ("ln-targets", lambda: LNTuningConfig(target_modules=[]), TypeError, "target_modules"),
    ("vera-projections-seed", lambda: vera_projections(4, 8, 8, seed=1.5), TypeError, "seed"),
    ("vera-projections-r", lambda: vera_projections(0, 8, 8), ValueError, "r must be"),
    ("prefix-cache-bytes", lambda: prefix_cache_bytes(4, 2, 0), ValueError, "token_dim"),
    ("compare-unknown-arm", lambda: build("QLoRA"), ValueError, "name must be one of"),
    ("fastest-no-functions", lambda: fastest_interleaved({}), ValueError, "fns"),
    ("fastest-repeats", lambda: fastest_interleaved({"a": lambda: None}, repeats=0), ValueError, "repeats"),
    ("fastest-warmup", lambda: fastest_interleaved({"a": lambda: None}, warmup=-1), ValueError, "warmup"),
]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_raises_naming_the_argument(case):
    _, call, exc, pattern = case
    with pytest.raises(exc, match=pattern):
        call()


# ----------------------------------------------------------------------------------------------- bad adapter files
def _saved_ia3(tmp_path):
    model = apply_ia3(tiny_lm())
    save_family_adapter(model, tmp_path)
    return tmp_path


def _edit_config(path, **changes):
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg.update(changes)
    (path / "adapter_config.json").write_text(json.dumps(cfg))


FILE_CASES = [
    ("missing-directory", lambda p: p / "nope", ValueError, "does not exist"),
    ("directory-type", lambda p: 3, TypeError, "directory must be"),
    ("unknown-peft-type", lambda p: (_edit_config(p, peft_type="LOHA"), p)[1], ValueError, "not a lorakit.family"),
    ("unsupported-field", lambda p: (_edit_config(p, exclude_modules=["k_proj"]), p)[1], ValueError,
     "not supported"),
    ("unknown-field", lambda p: (_edit_config(p, something_new=5), p)[1], ValueError, "unknown to lorakit"),
    ("bad-target-type", lambda p: (_edit_config(p, target_modules=7), p)[1], ValueError, "target_modules"),
    ("other-targets", lambda p: (_edit_config(p, target_modules=["q_proj", "down_proj"], feedforward_modules=[]),
                                 p)[1], ValueError, "keys do not match"),
    ("corrupted-weights", lambda p: ((p / "adapter_model.safetensors").write_bytes(b"garbage"), p)[1], ValueError,
     "corrupted"),
    ("not-json", lambda p: ((p / "adapter_config.json").write_text("{"), p)[1], ValueError, "not valid JSON"),
    ("missing-config", lambda p: ((p / "adapter_config.json").unlink(), p)[1], ValueError, "no adapter_config"),
]


@pytest.mark.parametrize("case", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_adapter_file_raises_and_leaves_the_model_unchanged(tmp_path, case):
    _, make_path, exc, pattern = case
    path = make_path(_saved_ia3(tmp_path))
    model = tiny_lm()
    before = snapshot(model)
    with pytest.raises(exc, match=pattern):
        load_family_adapter(model, path)
    assert_unchanged(model, before)


def test_bad_tensor_values_and_shapes_are_refused_before_anything_changes(tmp_path):
    from safetensors.torch import load_file, save_file

    path = _saved_ia3(tmp_path)
    tensors = load_file(path / "adapter_model.safetensors")
    key = sorted(tensors)[0]
    for bad in (torch.full_like(tensors[key], float("nan")), tensors[key].reshape(-1), tensors[key].long()):
        save_file({**tensors, key: bad.contiguous()}, str(path / "adapter_model.safetensors"))
        model = tiny_lm()
        before = snapshot(model)
        with pytest.raises(ValueError, match=key.split(".")[-1]):
            load_family_adapter(model, path)
        assert_unchanged(model, before)


def test_loading_another_method_into_an_adapted_model_is_refused(tmp_path):
    path = _saved_ia3(tmp_path)
    model = apply_vera(tiny_lm())
    before = snapshot(model)
    with pytest.raises(ValueError, match="cannot replace"):
        load_family_adapter(model, path)
    assert_unchanged(model, before)


def test_qdora_loader_refuses_a_plain_lora_adapter(tmp_path):
    lora = lorakit.apply_lora(tiny_lm(), lorakit.LoRAConfig())
    lorakit.save_adapter(lora, tmp_path)
    model = tiny_lm()
    before = snapshot(model)
    with pytest.raises(ValueError, match="use_dora"):
        load_qdora_adapter(model, tmp_path)
    assert_unchanged(model, before)


def test_failure_half_way_through_apply_leaves_the_model_unchanged(monkeypatch):
    """A layer that fails to build after others were built: the unchanged_on_error net restores everything."""
    from lorakit.family import ia3 as ia3_module

    calls = {"n": 0}
    real = ia3_module.IA3Linear

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated failure on the third target")
        return real(*args, **kwargs)

    monkeypatch.setattr(ia3_module, "IA3Linear", flaky)
    model = tiny_lm()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="third target"):
        apply_ia3(model)
    assert_unchanged(model, before)
