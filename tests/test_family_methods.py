"""Unit tests of lorakit.family's methods (notebook 13): each layer's equation by hand, the identity start,
parameter counts from the notebook's formulas, merge/unmerge, no stacking, save/reload in lorakit's reader,
and a training step in fp32, under CPU bf16 autocast, and on bf16/fp16 models, for every method."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from builders import tiny_llama, tiny_lm
from torch import nn

import lorakit
from lorakit.data import encode
from lorakit.family import (
    AdapterConfig,
    BiasLinear,
    BitFitConfig,
    BottleneckAdapterLinear,
    IA3Config,
    IA3Linear,
    LNTuningConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    QDoRALinear,
    VeRAConfig,
    apply_adapters,
    apply_bitfit,
    apply_ia3,
    apply_ln_tuning,
    apply_prefix_tuning,
    apply_prompt_tuning,
    apply_qdora,
    apply_vera,
    bitfit_parameters,
    load_family_adapter,
    load_qdora_adapter,
    prefix_cache_bytes,
    save_family_adapter,
    save_qdora_adapter,
    vera_projections,
)
from lorakit.family.vera import shared_projections, vera_layers

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning")]

IDS = torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(0))

#: name -> function(model) -> adapted model (in place or a wrapper); every method of the family
METHODS = {
    "ia3": lambda m: apply_ia3(m, IA3Config()),
    "vera": lambda m: apply_vera(m, VeRAConfig(r=16, target_modules="all-linear")),
    "bitfit": lambda m: apply_bitfit(m, BitFitConfig(add_missing_biases=True)),
    "prompt": lambda m: apply_prompt_tuning(m, PromptTuningConfig(4, init="sample_vocab")),
    "prefix": lambda m: apply_prefix_tuning(m, PrefixTuningConfig(3)),
    "prefix-mlp": lambda m: apply_prefix_tuning(m, PrefixTuningConfig(3, prefix_projection=True)),
    "houlsby": lambda m: apply_adapters(m, AdapterConfig("houlsby", 4)),
    "pfeiffer": lambda m: apply_adapters(m, AdapterConfig("pfeiffer", 4)),
    "parallel": lambda m: apply_adapters(m, AdapterConfig("parallel", 4, activation="gelu")),
    "ln": lambda m: apply_ln_tuning(m, LNTuningConfig()),
    "qdora": lambda m: apply_qdora(m, lorakit.LoRAConfig(r=4, target_modules=["q_proj", "v_proj"])),
}
SAVABLE = [k for k in METHODS if k != "qdora"]


def out_of(model, ids=IDS):
    out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def perturb(model, seed: int = 1, scale: float = 0.2) -> None:
    """Move every trainable parameter away from its initial value (so adapters change the output)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
            p.add_(scale * torch.randn(p.shape, generator=gen).to(p.dtype))


# ----------------------------------------------------------------------------------------------- identity start
@pytest.mark.parametrize("name", [k for k in METHODS if k not in ("prompt", "prefix", "prefix-mlp", "qdora")])
def test_every_additive_method_starts_at_the_pretrained_model(name):
    base = tiny_lm()
    with torch.no_grad():
        want = base(IDS)
        got = out_of(METHODS[name](copy.deepcopy(base)))
    assert torch.allclose(got, want, atol=1e-6), name


def test_qdora_starts_at_its_quantized_base():
    base = tiny_lm()
    qlora = lorakit.apply_qlora(copy.deepcopy(base), lorakit.LoRAConfig(r=4, target_modules=["q_proj", "v_proj"]))
    qdora = METHODS["qdora"](copy.deepcopy(base))
    with torch.no_grad():
        assert torch.allclose(qdora(IDS), qlora(IDS), atol=1e-5)


# ----------------------------------------------------------------------------------------------- equations by hand
def test_ia3_layer_equations():
    torch.manual_seed(0)
    base = nn.Linear(6, 4)
    x = torch.randn(3, 6)
    out_layer, ff_layer = IA3Linear(copy.deepcopy(base)), IA3Linear(copy.deepcopy(base), is_feedforward=True)
    assert out_layer.ia3_l.shape == (4, 1) and ff_layer.ia3_l.shape == (1, 6)  # PEFT's shapes
    with torch.no_grad():
        out_layer.ia3_l.copy_(torch.rand(4, 1) + 0.5)
        ff_layer.ia3_l.copy_(torch.rand(1, 6) + 0.5)
        assert torch.allclose(out_layer(x), out_layer.ia3_l.flatten() * base(x), atol=1e-6)  # l ⊙ (Wx + b)
        assert torch.allclose(ff_layer(x), base(ff_layer.ia3_l.flatten() * x), atol=1e-6)  # W (l ⊙ x) + b
        for layer in (out_layer, ff_layer):
            before = layer(x)
            w0, b0 = layer.base.weight.clone(), layer.base.bias.clone()
            layer.merge()
            assert torch.allclose(layer(x), before, atol=1e-5)
            layer.unmerge()
            assert torch.allclose(layer.base.weight, w0, atol=1e-6) and torch.allclose(layer.base.bias, b0, atol=1e-6)


def test_ia3_zero_entry_refuses_to_merge_and_layer_is_unchanged():
    layer = IA3Linear(nn.Linear(4, 3))
    with torch.no_grad():
        layer.ia3_l[1] = 0.0
    w = layer.base.weight.clone()
    with pytest.raises(ValueError, match="zeros"):
        layer.merge()
    assert torch.equal(layer.base.weight, w) and not layer.merged


def test_vera_layer_equation_and_shared_pair():
    torch.manual_seed(0)
    model = apply_vera(tiny_lm(), VeRAConfig(r=8, target_modules=["q_proj", "up_proj"]))
    layers = vera_layers(model)
    proj = shared_projections(model)
    assert all(m.projections is proj for m in layers.values())  # one pair for the whole model
    A, B = vera_projections(8, 32, 64, seed=0)  # largest in 32 (both), largest out 64 (up_proj)
    assert torch.equal(proj.vera_A, A) and torch.equal(proj.vera_B, B)
    bound = math.sqrt(6 / 32)  # Kaiming-uniform with gain sqrt(2) over fan-in 32
    assert A.abs().max() <= bound and A.abs().max() > 0.9 * bound
    layer = layers["layers.0.self_attn.q_proj"]
    with torch.no_grad():
        layer.vera_lambda_b.normal_()
        layer.vera_lambda_d.normal_()
        x = torch.randn(5, 32)
        A_s, B_s = A[:, :32], B[:32, :]
        by_hand = layer.base(x) + layer.vera_lambda_b * ((layer.vera_lambda_d * (x @ A_s.t())) @ B_s.t())
        assert torch.allclose(layer(x), by_hand, atol=1e-5)
        before = layer(x)
        layer.merge()
        assert torch.allclose(layer(x), before, atol=1e-5)
        layer.unmerge()
    model.to(torch.float64)  # moving the model keeps the pair shared (one module object)
    assert all(m.projections.vera_A.dtype == torch.float64 for m in vera_layers(model).values())
    assert len({id(m.projections) for m in vera_layers(model).values()}) == 1


def test_vera_reload_without_stored_projections_rebuilds_them_from_the_seed(tmp_path):
    base = tiny_lm()
    model = apply_vera(copy.deepcopy(base), VeRAConfig(r=8, target_modules="all-linear", save_projection=False,
                                                       projection_prng_key=3))
    perturb(model)
    save_family_adapter(model, tmp_path)
    from safetensors.torch import load_file

    assert not any("vera_A" in k for k in load_file(tmp_path / "adapter_model.safetensors"))
    back = load_family_adapter(copy.deepcopy(base), tmp_path)
    with torch.no_grad():
        assert torch.equal(out_of(back), out_of(model))


def test_bottleneck_adapter_equations():
    torch.manual_seed(0)
    base = nn.Linear(6, 4)
    x = torch.randn(3, 6)
    serial = BottleneckAdapterLinear(copy.deepcopy(base), 2, serial=True, activation="relu", scaling=0.5)
    parallel = BottleneckAdapterLinear(copy.deepcopy(base), 2, serial=False, activation="tanh")
    for layer in (serial, parallel):
        perturb(layer)
    with torch.no_grad():
        h = base(x)
        s_down, s_up = serial.adapter_down, serial.adapter_up
        assert torch.allclose(serial(x), h + 0.5 * s_up(F.relu(s_down(h))), atol=1e-6)  # after the sublayer
        p_down, p_up = parallel.adapter_down, parallel.adapter_up
        assert torch.allclose(parallel(x), h + p_up(torch.tanh(p_down(x))), atol=1e-6)  # beside it
    m = 2
    assert sum(p.numel() for p in serial.parameters() if p.requires_grad) == m * (4 + 1) + 4 * (m + 1)
    assert sum(p.numel() for p in parallel.parameters() if p.requires_grad) == m * (6 + 1) + 4 * (m + 1)


def test_adapters_cannot_merge():
    model = apply_adapters(tiny_lm(), AdapterConfig())
    with pytest.raises(ValueError, match="cannot be merged"):
        lorakit.merge_lora(model)
    with pytest.raises(ValueError, match="cannot be merged"):
        lorakit.merge_and_unload(model)


def test_pfeiffer_and_houlsby_placements():
    houlsby = apply_adapters(tiny_lm(), AdapterConfig("houlsby", 4))
    pfeiffer = apply_adapters(tiny_lm(), AdapterConfig("pfeiffer", 4))
    names = lambda m: sorted(n.split(".")[-1] for n in lorakit.adapter_layers(m))  # noqa: E731
    assert names(houlsby) == ["down_proj", "down_proj", "o_proj", "o_proj"]
    assert names(pfeiffer) == ["down_proj", "down_proj"]


def test_ln_tuning_trains_copies_of_the_norms_and_merge_swaps():
    base = tiny_lm()
    model = apply_ln_tuning(copy.deepcopy(base))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".ln_tuning_layers." in n for n in trainable)
    assert len(trainable) == 2 * 2 + 1  # two norms per block, two blocks, the final norm
    perturb(model)
    with torch.no_grad():
        before = model(IDS)
        lorakit.merge_lora(model)
        assert torch.equal(model(IDS), before)
        dense = lorakit.merge_and_unload(model)
        assert not lorakit.adapter_layers(dense) and torch.equal(dense(IDS), before)


def test_ln_tuning_on_a_bert_layernorm():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32)
    torch.manual_seed(0)
    bert = transformers.BertModel(cfg).eval()
    model = apply_ln_tuning(bert, LNTuningConfig(target_modules=["LayerNorm"]))
    n_ln = 3  # embeddings, attention output, output
    assert lorakit.trainable_parameters(model)[0] == n_ln * 2 * 16  # gain and bias each
    with pytest.raises(ValueError, match="only"):
        apply_ln_tuning(transformers.BertModel(cfg), LNTuningConfig(target_modules=["query"]))


def test_bitfit_on_a_biased_bert_trains_exactly_its_biases():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32)
    torch.manual_seed(0)
    bert = apply_bitfit(transformers.BertModel(cfg))
    trainable = {n for n, p in bert.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in bert.named_parameters() if n.endswith(".bias")}
    assert set(bitfit_parameters(bert)) == trainable
    assert not lorakit.adapter_layers(bert)  # nothing added: BitFit trains what is there


def test_bitfit_on_tiny_lm_needs_added_biases_and_counts_one_per_output():
    with pytest.raises(ValueError, match="add_missing_biases"):
        apply_bitfit(tiny_lm())
    model = apply_bitfit(tiny_lm(), BitFitConfig(add_missing_biases=True))
    layers = lorakit.adapter_layers(model)
    assert all(isinstance(m, BiasLinear) for m in layers.values()) and "lm_head" not in layers
    assert lorakit.trainable_parameters(model)[0] == sum(m.out_features for m in layers.values())
    perturb(model)
    with torch.no_grad():
        before = model(IDS)
        dense = lorakit.merge_and_unload(model)
    assert all(m.bias is not None for n, m in dense.named_modules() if isinstance(m, nn.Linear) and n != "lm_head")
    with torch.no_grad():
        assert torch.allclose(dense(IDS), before, atol=1e-6)


def test_prompt_tuning_init_schemes_and_text_init_with_the_course_tokens():
    base = tiny_lm()
    torch.manual_seed(0)
    sampled = apply_prompt_tuning(copy.deepcopy(base), PromptTuningConfig(5, init="sample_vocab"))
    rows = base.embed_tokens.weight
    assert all(any(torch.equal(p, r) for r in rows) for p in sampled.prompt_embeddings)  # copies of vocabulary rows
    text = apply_prompt_tuning(copy.deepcopy(base), PromptTuningConfig(5, init="text", init_text="ab>"),
                               tokenizer=lambda s: encode(list(s)))
    ids = encode(list("ab>ab"))
    assert torch.equal(text.prompt_embeddings, rows[ids])  # repeated to n = 5, as PEFT
    assert out_of(text).shape == (2, 9, 32)  # the virtual positions' logits are dropped
    with pytest.raises(RuntimeError, match="PromptTuningModel"):
        base_inside = text.base
        base_inside(IDS)  # the bare base would silently eat 5 real tokens: refused


def test_prefix_tuning_counts_and_cache_bytes():
    from transformers import DynamicCache  # noqa: F401 (transformers is a dev dependency)

    model = tiny_lm()  # d_model 32, 2 layers
    plain = apply_prefix_tuning(copy.deepcopy(model), PrefixTuningConfig(5))
    assert lorakit.trainable_parameters(plain)[0] == 2 * 2 * 5 * 32  # 2 L n d (eq. 13)
    mlp = apply_prefix_tuning(copy.deepcopy(model), PrefixTuningConfig(5, prefix_projection=True,
                                                                       encoder_hidden_size=7))
    assert lorakit.trainable_parameters(mlp)[0] == 5 * 32 + (32 * 7 + 7) + (7 * 2 * 2 * 32 + 2 * 2 * 32)
    kv = plain.past_key_values(batch_size=3)
    measured = sum(t.numel() * t.element_size() for pair in kv for t in pair)
    assert measured == prefix_cache_bytes(5, 2, 32, batch_size=3, bytes_per_value=4)
    with pytest.raises(RuntimeError, match="PrefixTuningModel"):
        plain.base(IDS)


def test_prefix_tuning_refuses_gradient_checkpointing():
    model = tiny_lm()
    model.gradient_checkpointing = True
    with pytest.raises(ValueError, match="gradient checkpointing"):
        apply_prefix_tuning(model, PrefixTuningConfig(2))
    wrapped = apply_prefix_tuning(tiny_lm(), PrefixTuningConfig(2))
    wrapped.base.gradient_checkpointing = True
    with pytest.raises(ValueError, match="gradient checkpointing"):
        wrapped(IDS)


def test_qdora_merge_unmerge_and_counts():
    model = METHODS["qdora"](tiny_lm())
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QDoRALinear)}
    assert len(layers) == 4
    assert lorakit.trainable_parameters(model)[0] == sum(4 * (m.in_features + m.out_features) + m.out_features
                                                         for m in layers.values())
    perturb(model, scale=0.05)
    with torch.no_grad():
        before = model(IDS)
        lorakit.merge_lora(model)
        merged = model(IDS)
        lorakit.unmerge_lora(model)
        again = model(IDS)
    assert (merged - before).abs().max() <= 0.05 * before.abs().max()  # bf16 merged weight
    assert torch.equal(again, before)  # unmerge restores the 4-bit base bit for bit


def test_qdora_save_and_reload(tmp_path):
    base = tiny_lm()
    model = METHODS["qdora"](copy.deepcopy(base))
    perturb(model, scale=0.05)
    save_qdora_adapter(model, tmp_path)
    back = load_qdora_adapter(copy.deepcopy(base), tmp_path)
    with torch.no_grad():
        assert torch.equal(back(IDS), model(IDS))


# ----------------------------------------------------------------------------------------------- counts
def test_parameter_counts_follow_the_notebook_formulas():
    model = tiny_lm()  # d = 32, d_ff = 64, L = 2
    d, d_ff, L = 32, 64, 2
    assert lorakit.trainable_parameters(METHODS["ia3"](copy.deepcopy(model)))[0] == L * (2 * d + d_ff)  # eq. 6
    vera = METHODS["vera"](copy.deepcopy(model))
    assert lorakit.trainable_parameters(vera)[0] == sum(16 + m.out_features for m in vera_layers(vera).values())
    assert lorakit.trainable_parameters(METHODS["prompt"](copy.deepcopy(model)))[0] == 4 * d  # eq. 11
    houlsby = METHODS["houlsby"](copy.deepcopy(model))
    assert lorakit.trainable_parameters(houlsby)[0] == 2 * L * (4 * (d + 1) + d * (4 + 1))  # eq. 8


def test_no_stacking_in_either_direction():
    ia3 = METHODS["ia3"](tiny_lm())
    with pytest.raises(ValueError, match="stack"):
        lorakit.apply_lora(ia3, lorakit.LoRAConfig())
    lora = lorakit.apply_lora(tiny_lm(), lorakit.LoRAConfig())
    for name in ("ia3", "vera", "prompt", "prefix", "houlsby", "ln", "bitfit", "qdora"):
        with pytest.raises(ValueError, match="stack|already"):
            METHODS[name](lora)
    bitfit = METHODS["bitfit"](tiny_lm())
    with pytest.raises(ValueError, match="stack|already"):
        apply_ia3(bitfit)


# ----------------------------------------------------------------------------------------------- save / reload
@pytest.mark.parametrize("name", SAVABLE)
@pytest.mark.parametrize("hf", [False, True], ids=["tiny_lm", "hf_llama"])
def test_save_reload_same_outputs_and_hot_swap(tmp_path, name, hf):
    base = tiny_llama() if hf else tiny_lm()
    ids = torch.randint(0, 32, (2, 7), generator=torch.Generator().manual_seed(3))
    model = METHODS[name](copy.deepcopy(base)).eval()
    perturb(model)
    save_family_adapter(model, tmp_path / "a")
    back = load_family_adapter(copy.deepcopy(base), tmp_path / "a").eval()
    with torch.no_grad():
        want = out_of(model, ids)
        assert torch.allclose(out_of(back, ids), want, atol=1e-6), name
        assert (want - out_of(base, ids)).abs().max() > 1e-3
    other = METHODS[name](copy.deepcopy(base)).eval()  # hot swap into an adapted model of the same shape
    if name == "prefix-mlp":  # the file holds the MLP's output only: it cannot go back into an MLP
        with pytest.raises(ValueError, match="MLP"):
            load_family_adapter(other, tmp_path / "a")
        return
    swapped = load_family_adapter(other, tmp_path / "a")
    with torch.no_grad():
        assert torch.allclose(out_of(swapped, ids), want, atol=1e-6)


# ----------------------------------------------------------------------------------------------- dtypes, autocast
def _train_step(model, ids, autocast: bool = False) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = out_of(model, ids)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids.reshape(-1))
    loss.backward()
    assert all(p.grad is not None for p in params)
    opt.step()
    assert any(not torch.equal(p, b) for p, b in zip(params, before, strict=True))
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    return loss.item()


@pytest.mark.parametrize("name", list(METHODS))
def test_training_step_fp32_and_under_cpu_bf16_autocast(name):
    for autocast in (False, True):
        model = METHODS[name](tiny_lm())
        assert math.isfinite(_train_step(model, IDS, autocast=autocast))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", [k for k in METHODS if k != "qdora"])
def test_low_precision_models_train_with_fp32_adapters(name, dtype):
    model = METHODS[name](tiny_lm().to(dtype))
    out = out_of(model)
    assert out.dtype == dtype and torch.isfinite(out.float()).all()
    assert math.isfinite(_train_step(model, IDS))


def test_galore_training_step_under_autocast():
    from lorakit.family import GaLoreAdamW, galore_param_groups

    model = tiny_lm()
    opt = GaLoreAdamW(galore_param_groups(model, rank=4, update_proj_gap=2), lr=1e-3)
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(IDS)
        F.cross_entropy(logits.float().reshape(-1, 32), IDS.reshape(-1)).backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ----------------------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(METHODS))
def test_cuda_matches_cpu_and_trains(name, dtype):
    base = tiny_lm()
    cpu = METHODS[name](copy.deepcopy(base)).eval()
    perturb(cpu, scale=0.05)
    gpu = copy.deepcopy(cpu).to("cuda")
    if dtype != torch.float32 and name != "qdora":
        gpu = METHODS[name](copy.deepcopy(base).to("cuda", dtype)).eval()
        gpu.load_state_dict(cpu.state_dict(), strict=False)
    with torch.no_grad():
        want, got = out_of(cpu), out_of(gpu, IDS.to("cuda")).float().cpu()
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    assert (got - want).abs().max() <= tol * want.abs().max().clamp_min(1.0)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = F.cross_entropy(out_of(gpu.train(), IDS.to("cuda")).float().reshape(-1, 32), IDS.to("cuda").reshape(-1))
    loss.backward()
    assert math.isfinite(loss.item())


def test_the_comparison_harness_trains_and_measures_every_table_arm_for_a_few_steps():
    from lorakit.data import caesar_task
    from lorakit.family.compare import METHODS, TABLE, fastest_interleaved, train_run

    train, heldout = caesar_task(n_train=64, n_eval=16)
    for name in ("LoRA+", "prompt tuning", "GaLore r=16"):
        r = train_run(name, METHODS[name].lrs[1], 0, train, heldout, steps=2, batch_size=8, eval_every=2)
        assert r.eval_steps == [2] and math.isfinite(r.loss[-1]) and r.optimizer_state_bytes > 0
    assert len(TABLE) == 11 and all(name in METHODS for name in TABLE)
    times = fastest_interleaved({"a": lambda: None, "b": lambda: sum(range(100))}, repeats=3, warmup=1)
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())


def test_prompt_tuning_on_an_encoder_returns_the_real_tokens_hidden_states():
    transformers = pytest.importorskip("transformers")
    from lorakit.family import PromptTuningConfig, apply_prompt_tuning

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32)
    bert = transformers.BertModel(cfg).eval()
    model = apply_prompt_tuning(bert, PromptTuningConfig(num_virtual_tokens=3))
    ids = torch.randint(0, 50, (2, 5))
    out = model(ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids))
    assert out.last_hidden_state.shape == (2, 5, 16)
    out.last_hidden_state.sum().backward()
    assert model.prompt_embeddings.grad is not None and model.prompt_embeddings.grad.abs().sum() > 0
