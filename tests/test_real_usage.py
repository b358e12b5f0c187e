"""lorakit off the tested path (issue: real usage): mixed precision, PiSSA reloads, no stacking, configs
that agree with their layers, one rounding per merge, and inputs PEFT accepts.

Each test names the item of the issue it covers. The MiniLM-based end-to-end run is tests/test_real_model.py.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from builders import input_ids, logits, tiny_llama, tiny_lm
from snapshot import assert_unchanged, snapshot

import lorakit
from lorakit.functional import lora_linear, lora_linear_reference

peft = pytest.importorskip("peft")
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]

QV = ["q_proj", "v_proj"]


def nudge(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    """Move every LoRA factor away from its init, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in sorted(lorakit.lora_layers(model).items()):
            layer.lora_A.add_(scale * torch.randn(layer.lora_A.shape, generator=gen).to(layer.lora_A.dtype))
            layer.lora_B.add_(scale * torch.randn(layer.lora_B.shape, generator=gen).to(layer.lora_B.dtype))


# ----------------------------------------------------------------- item 1: mixed precision (LoRA layer)
@pytest.mark.parametrize("base_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_lora_trains_under_cpu_autocast(base_dtype, dropout):
    """Forward + backward + AdamW under torch.autocast(bf16): no dtype error, fp32 grads close to a
    plain-autograd reference run under the same autocast."""
    torch.manual_seed(0)
    model = lorakit.apply_lora(tiny_lm().to(base_dtype), lorakit.LoRAConfig(r=4, alpha=8, dropout=dropout,
                                                                            target_modules="all-linear"))
    nudge(model)
    ids = input_ids(vocab=32)
    model.train()
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids)
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values())
    if dropout == 0.0:  # the same model written with plain ops under autocast (PEFT's arithmetic)
        model.zero_grad()
        for layer in lorakit.lora_layers(model).values():
            layer.forward = (lambda m: lambda x: lora_linear_reference(x, m.base.weight, None, m.lora_A, m.lora_B,
                                                                       m.scaling))(layer)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref = model(ids)
        ref.float().square().mean().backward()
        assert (out.float() - ref.float()).abs().max() <= 0.02 * ref.float().abs().max()
        for name, p in model.named_parameters():
            if p.requires_grad:
                assert (p.grad - grads[name]).norm() <= 0.05 * p.grad.norm() + 1e-8, name
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    opt.step()


def test_lora_linear_autocast_gradients_keep_input_dtypes():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 8, generator=gen, requires_grad=True)
    w, b = torch.randn(6, 8, generator=gen), torch.randn(6, generator=gen)
    A = torch.randn(2, 8, generator=gen, requires_grad=True)
    B = torch.randn(6, 2, generator=gen, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lora_linear(x, w, b, A, B, 0.5)
        ref = (torch.nn.functional.linear(x, w, b) + 0.5 * ((x @ A.t()) @ B.t()))
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == A.grad.dtype == B.grad.dtype == torch.float32
    gx, gA, gB = x.grad.clone(), A.grad.clone(), B.grad.clone()
    for t in (x, A, B):
        t.grad = None
    ref.float().sum().backward()
    for got, want in ((gx, x.grad), (gA, A.grad), (gB, B.grad)):
        assert (got - want).norm() <= 0.02 * want.norm()


def test_lora_backward_inside_autocast_context():
    """Calling backward inside the autocast block (a common user pattern) works as well."""
    model = lorakit.apply_lora(tiny_lm(), lorakit.LoRAConfig(r=4, target_modules=QV))
    nudge(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids(vocab=32)).float().sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_lora_layer_compiles_without_graph_breaks():
    """No host syncs or graph breaks in LoRALinear's forward and backward (fullgraph compile, eager backend)."""
    layer = lorakit.LoRALinear(torch.nn.Linear(16, 12), r=4, alpha=8)
    nudge_layer = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=nudge_layer))
    x = torch.randn(3, 16, generator=nudge_layer)

    def loss(inp):  # dynamo traces the custom backward too: a sync or break in it fails fullgraph
        return layer(inp).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, backend="eager", fullgraph=True)
    got = compiled(x)
    got.backward()
    g_compiled = layer.lora_B.grad.clone()
    layer.lora_B.grad = None
    layer.lora_A.grad = None
    want = loss(x)
    want.backward()
    assert torch.allclose(got, want) and torch.allclose(g_compiled, layer.lora_B.grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch._dynamo.reset()
        torch.compile(loss, backend="eager", fullgraph=True)(x).backward()


# ----------------------------------------------------------------- item 2: PiSSA adapters reload right
def pissa_model(base: torch.nn.Module, r: int = 4) -> torch.nn.Module:
    model = lorakit.apply_lora(copy.deepcopy(base), lorakit.LoRAConfig(r=r, alpha=8, init="pissa", target_modules=QV))
    nudge(model, scale=0.05)
    return model


@pytest.mark.parametrize("convert", [False, True])
def test_pissa_round_trip_in_lorakit_and_peft(tmp_path, convert):
    base = tiny_llama()
    ids = input_ids()
    model = pissa_model(base)
    want = logits(model, ids)
    lorakit.save_adapter(model, tmp_path, convert_pissa=convert)
    raw = json.loads((tmp_path / "adapter_config.json").read_text())
    assert raw["init_lora_weights"] == (True if convert else "pissa")
    assert raw["r"] == (8 if convert else 4)
    fresh = lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    assert (logits(fresh, ids) - want).abs().max() <= 1e-5
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    assert (logits(theirs, ids) - want).abs().max() <= 1e-5


def test_peft_pissa_adapter_loads_in_lorakit(tmp_path):
    base = tiny_llama()
    ids = input_ids()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights="pissa",
                                                                      target_modules=QV))
    with torch.no_grad():
        for module in theirs.modules():
            if isinstance(module, peft.tuners.lora.LoraLayer):
                module.lora_B["default"].weight.add_(0.05)
    want = logits(theirs, ids)
    theirs.save_pretrained(tmp_path)
    ours = lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    assert (logits(ours, ids) - want).abs().max() <= 1e-5


def test_a_pissa_load_that_cannot_be_right_is_refused(tmp_path):
    base = tiny_llama()
    lorakit.save_adapter(pissa_model(base), tmp_path / "pissa")
    plain = lorakit.apply_lora(copy.deepcopy(base), lorakit.LoRAConfig(r=4, alpha=8, target_modules=QV))
    before = snapshot(plain)
    with pytest.raises(ValueError, match="PiSSA adapter is right only on its residual base"):
        lorakit.load_adapter(plain, tmp_path / "pissa")  # hot-swap into layers holding W0, not the residual
    assert_unchanged(plain, before)
    lorakit.save_adapter(plain, tmp_path / "plain")
    residual = pissa_model(base)
    before = snapshot(residual)
    with pytest.raises(ValueError, match="cannot be right"):
        lorakit.load_adapter(residual, tmp_path / "plain")  # a plain adapter into residual layers
    assert_unchanged(residual, before)
    raw = json.loads((tmp_path / "pissa" / "adapter_config.json").read_text())
    raw["init_lora_weights"] = "pissa_niter_4"
    (tmp_path / "pissa" / "adapter_config.json").write_text(json.dumps(raw))
    fresh = copy.deepcopy(base)
    before = snapshot(fresh)
    with pytest.raises(ValueError, match="randomized SVD"):
        lorakit.load_adapter(fresh, tmp_path / "pissa")
    assert_unchanged(fresh, before)
    with pytest.raises(ValueError, match="convert_pissa=True needs a PiSSA model"):
        lorakit.save_adapter(plain, tmp_path / "x", convert_pissa=True)


def test_pissa_keeps_the_callers_layer():
    base = torch.nn.Linear(16, 12)
    w0 = base.weight.detach().clone()
    layer = lorakit.LoRALinear(base, r=4, init="pissa")
    assert torch.equal(base.weight, w0)  # the residual lives in a new layer
    assert layer.base is not base and layer.base.bias is base.bias
    assert torch.allclose(layer.base.weight + layer.delta_weight(), w0, atol=1e-5)


# ----------------------------------------------------------------- item 5: adapters never stack
@pytest.mark.parametrize("second", ["lora all-linear", "lora regex", "qlora regex", "adalora", "dora"])
@pytest.mark.parametrize("first", ["lora", "adalora", "qlora"])
def test_a_second_adapter_is_refused_naming_the_layer(first, second):
    model = tiny_lm()
    if first == "lora":
        lorakit.apply_lora(model, lorakit.LoRAConfig(r=2, target_modules=QV))
    elif first == "adalora":
        lorakit.apply_adalora(model, lorakit.AdaLoRAConfig(init_r=4, target_r=2, total_step=10, target_modules=QV))
    else:
        lorakit.apply_qlora(model, lorakit.LoRAConfig(r=2, target_modules=QV), blocksize=32)
    before = snapshot(model)
    regex = r".*\.(q|v|k)_proj"
    with pytest.raises(ValueError, match=r"already has adapter layers \(.*layers\.0\.self_attn\.q_proj"):
        if second == "lora all-linear":
            lorakit.apply_lora(model, lorakit.LoRAConfig(target_modules="all-linear"))
        elif second == "lora regex":
            lorakit.apply_lora(model, lorakit.LoRAConfig(target_modules=regex))
        elif second == "qlora regex":
            lorakit.apply_qlora(model, lorakit.LoRAConfig(target_modules=regex), blocksize=32)
        elif second == "adalora":
            lorakit.apply_adalora(model, lorakit.AdaLoRAConfig(total_step=10, target_modules="all-linear"))
        else:
            lorakit.apply_lora(model, lorakit.LoRAConfig(use_dora=True, target_modules=["k_proj"]))
    assert_unchanged(model, before)


def test_target_selection_refuses_layers_inside_adapters():
    model = lorakit.apply_lora(tiny_lm(), lorakit.LoRAConfig(r=2, target_modules=QV))
    with pytest.raises(ValueError, match=r"selects 'layers\.0\.self_attn\.q_proj\.base', but layer "
                                         r"'layers\.0\.self_attn\.q_proj' already carries a LoRA adapter"):
        lorakit.peft.find_target_modules(model, "all-linear")
    with pytest.raises(ValueError, match="already carries a LoRA adapter"):
        lorakit.peft.find_target_modules(model, ["q_proj"])


# ----------------------------------------------------------------- item 6: the config must agree with the layers
@pytest.mark.parametrize(("change", "message"), [
    ({"r": 8}, r"config\.r=8 but layer"),
    ({"alpha": 32}, r"config\.alpha=32 but layer"),
    ({"rslora": True}, r"config\.rslora=True but layer"),
    ({"dropout": 0.1}, r"config\.dropout=0\.1 but layer"),
    ({"use_dora": True}, r"config\.use_dora=True but layers"),
    ({"init": "pissa"}, r"config\.init='pissa' but layer"),
    ({"target_modules": ["q_proj"]}, r"miss \['layers\.0\.self_attn\.v_proj'"),
    ({"target_modules": ["q_proj", "v_proj", "k_proj"]}, r"would adapt \['layers\.0\.self_attn\.k_proj'"),
    ({"target_modules": "all-linear"}, r"would adapt \["),
])
def test_save_adapter_refuses_a_config_that_disagrees(tmp_path, change, message):
    model = lorakit.apply_lora(tiny_lm(), lorakit.LoRAConfig(r=4, alpha=8, target_modules=QV))
    wrong = lorakit.LoRAConfig(**{**{"r": 4, "alpha": 8, "target_modules": QV}, **change})
    with pytest.raises(ValueError, match=message):
        lorakit.save_adapter(model, tmp_path, config=wrong)
    assert not (tmp_path / "adapter_model.safetensors").exists()


def test_equivalent_configs_are_accepted(tmp_path):
    model = lorakit.apply_lora(tiny_lm(), lorakit.LoRAConfig(r=4, alpha=8, target_modules=QV))
    for targets in (r".*\.(q|v)_proj", ["v_proj", "q_proj"], {"q_proj", "v_proj"}):
        lorakit.save_adapter(model, tmp_path, config=lorakit.LoRAConfig(r=4, alpha=8, target_modules=targets))
    everything = lorakit.apply_lora(tiny_lm(), lorakit.LoRAConfig(r=4, target_modules="all-linear"))
    lorakit.save_adapter(everything, tmp_path / "all", config=lorakit.LoRAConfig(r=4, target_modules="all-linear"))


# ----------------------------------------------------------------- item 9: one rounding per merge
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_merge_rounds_once(dtype):
    torch.manual_seed(0)
    base = torch.nn.Linear(256, 256).to(dtype)
    layer = lorakit.LoRALinear(base, r=8, alpha=16)
    with torch.no_grad():
        layer.lora_B.normal_(std=0.05)
    exact = (base.weight.float() + layer.scaling * (layer.lora_B @ layer.lora_A)).to(dtype)
    layer.merge()
    assert (layer.base.weight != exact).float().mean().item() == 0.0


def test_merge_matches_peft_bit_for_bit_in_bf16():
    base = tiny_llama().to(torch.bfloat16)
    ours = lorakit.apply_lora(copy.deepcopy(base), lorakit.LoRAConfig(r=4, alpha=8, target_modules=QV))
    nudge(ours)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=QV))
    with torch.no_grad():
        for name, module in theirs.base_model.model.named_modules():
            if isinstance(module, peft.tuners.lora.LoraLayer):
                module.lora_A["default"].weight.copy_(ours.get_submodule(name).lora_A)
                module.lora_B["default"].weight.copy_(ours.get_submodule(name).lora_B)
    merged_ours = lorakit.merge_and_unload(ours)
    merged_theirs = theirs.merge_and_unload()
    for name, p in merged_theirs.named_parameters():
        assert torch.equal(p, merged_ours.get_parameter(name)), name


# ----------------------------------------------------------------- item 11: inputs PEFT accepts
def test_numpy_rank_and_set_targets_are_accepted(tmp_path):
    config = lorakit.LoRAConfig(r=np.int64(8), alpha=np.float32(16), target_modules={"v_proj", "q_proj"})
    assert type(config.r) is int and config.r == 8 and config.alpha == 16
    assert config.target_modules == ["q_proj", "v_proj"]
    model = lorakit.apply_lora(tiny_lm(), config)
    lorakit.save_adapter(model, tmp_path)
    raw = json.loads((tmp_path / "adapter_config.json").read_text())
    assert raw["r"] == 8 and raw["target_modules"] == ["q_proj", "v_proj"]
    layer = lorakit.LoRALinear(torch.nn.Linear(8, 8), r=np.int32(2), alpha=np.float64(4.0))
    assert type(layer.r) is int and layer.scaling == 2.0


def test_a_target_matching_a_non_linear_module_is_refused():
    model = tiny_lm()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"matches 'layers\.0\.input_layernorm', a RMSNorm, but only nn\.Linear"):
        lorakit.apply_lora(model, lorakit.LoRAConfig(target_modules=["input_layernorm"]))
    with pytest.raises(ValueError, match=r"matches 'layers\.0\.self_attn', a Attention"):
        lorakit.apply_lora(model, lorakit.LoRAConfig(target_modules=r"layers\.0\.self_attn.*"))
    assert_unchanged(model, before)


def test_peft_also_refuses_a_non_linear_target():
    with pytest.raises(ValueError):
        peft.get_peft_model(tiny_lm(), peft.LoraConfig(target_modules=["input_layernorm"]))
