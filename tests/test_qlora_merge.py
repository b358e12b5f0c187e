"""Merging QLoRA layers (issue 9, items 4 and 9): the model's dtype, one rounding, checks before any change.

* A merged dense layer has the dtype of the weight that was quantized (an fp32 model gets fp32 layers), unless
  ``dtype=`` says otherwise, through every merge entry point: ``QLoRALinear.merge``, ``merge_qlora``,
  ``lorakit.qlora.merge_and_unload`` and ``lorakit.peft.merge_and_unload``; the next forward works.
* In bf16/fp16 the merged weight is ``W + s B A`` summed in fp32 and rounded once: 0 of its elements differ
  from the correctly rounded sum (casting ``s B A`` first, the mistake, makes a visible fraction differ).
* ``check_merge`` refuses a merge that would write NaN/inf, and model-level merges run it on every layer first.
"""

from __future__ import annotations

import copy

import pytest
import torch
from builders import tiny_lm
from snapshot import assert_unchanged, snapshot
from torch import nn

import lorakit
from lorakit import nf4
from lorakit.peft import LoRAConfig, lora_layers, merge_lora
from lorakit.qlora import NF4Linear, QLoRALinear, apply_qlora, merge_and_unload, merge_qlora

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]

BACKENDS = ["lorakit", "bitsandbytes"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CONFIG = LoRAConfig(r=4, alpha=8, target_modules="all-linear")


def nudge(model: nn.Module, std: float = 0.05, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in sorted(lora_layers(model).items()):
            layer.lora_B.copy_(std * torch.randn(layer.lora_B.shape, generator=gen))
    return model


def make_layer(backend: str = "lorakit", dtype: torch.dtype = torch.float32, std: float = 0.05) -> QLoRALinear:
    torch.manual_seed(0)
    layer = QLoRALinear(nn.Linear(128, 64).to(dtype), r=4, alpha=8, backend=backend)
    nudge(nn.Sequential(layer), std)
    return layer


def qlora_lm(backend: str = "lorakit", dtype: torch.dtype = torch.float32) -> nn.Module:
    return nudge(apply_qlora(tiny_lm().to(dtype), CONFIG, blocksize=32, backend=backend))


def logits(model: nn.Module, dtype: torch.dtype | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(5)))


# --------------------------------------------------------------------------- item 4: the model's dtype
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_merge_gives_the_quantized_weights_dtype(backend, dtype):
    layer = make_layer(backend, dtype)
    assert layer.weight_dtype == dtype
    x = torch.randn(5, 128).to(dtype)
    before = layer(x)
    dense = layer.merge()
    assert type(dense) is nn.Linear and dense.weight.dtype == dtype and dense.bias.dtype == dtype
    after = layer(x)
    assert after.dtype == dtype
    assert ((after.float() - before.float()).norm() / before.float().norm()).item() < 2e-2
    layer.unmerge()
    explicit = layer.merge(dtype=torch.float16 if dtype != torch.float16 else torch.float32)
    assert explicit.weight.dtype == (torch.float16 if dtype != torch.float16 else torch.float32)


@pytest.mark.parametrize("merge", ["merge_qlora", "qlora.merge_and_unload", "peft.merge_and_unload", "merge_lora"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_merge_entry_point_keeps_an_fp32_model_fp32(backend, merge):
    """The issue's repro: an fp32 model merged into bf16 Linears raised on the next forward."""
    model = qlora_lm(backend)
    before = logits(model)
    if merge == "merge_qlora":
        merged = merge_qlora(model)
    elif merge == "qlora.merge_and_unload":
        merged = merge_and_unload(model)
    elif merge == "peft.merge_and_unload":
        merged = lorakit.merge_and_unload(model)
    else:
        merged = merge_lora(model)  # merged in place, layers kept
    names = [n for n, m in tiny_lm().named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    for name in names:
        module = merged.get_submodule(name)
        dense = module.base if isinstance(module, QLoRALinear) else module
        assert type(dense) is nn.Linear and dense.weight.dtype == torch.float32, name
    after = logits(merged)  # the next forward works, in fp32
    assert after.dtype == torch.float32
    torch.testing.assert_close(after, before, rtol=2e-2, atol=2e-2)  # the base ran in bf16 compute before


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_cast_to_bf16_merges_into_bf16_layers(backend):
    model = qlora_lm(backend).to(torch.bfloat16)
    assert all(m.weight_dtype == torch.bfloat16 for m in lora_layers(model).values())
    merged = lorakit.merge_and_unload(model)
    assert merged.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert logits(merged).dtype == torch.bfloat16


def test_merge_qlora_dtype_argument_wins():
    merged = merge_qlora(qlora_lm(), dtype=torch.bfloat16)
    assert merged.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16
    assert torch.isfinite(logits(merged.to(torch.bfloat16))).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_requantized_merge_remembers_the_weights_dtype_and_rounds_once(backend, dtype):
    layer = make_layer(backend, dtype)
    exact = layer.merged_weight()
    new = layer.merge(requantize=True)
    if backend == "lorakit":
        assert isinstance(new, NF4Linear) and new.weight_dtype == dtype
        q = nf4.quantize_nf4(exact, blocksize=64, double_quant=True)  # the fp32 sum quantized directly
        assert torch.equal(new.quantized.packed, q.packed)
    else:
        assert new.weight.quant_state.dtype == dtype
    assert layer(torch.randn(3, 128).to(dtype)).dtype == dtype


# --------------------------------------------------------------------------- item 9: round once
def _differing_fraction(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a != b).float().mean().item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_merge_rounds_once(backend, dtype):
    layer = make_layer(backend, dtype, std=0.3)
    w0, delta = layer.dequantized_weight(torch.float32), layer.delta_weight()
    correctly_rounded = (w0 + delta).to(dtype)
    rounded_twice = (w0.to(dtype) + delta.to(dtype)).to(dtype)  # the mistake: cast the update first
    assert _differing_fraction(rounded_twice, correctly_rounded) > 0.01, "the check is sensitive"
    merged = layer.merge().weight.detach()
    assert merged.dtype == dtype
    assert _differing_fraction(merged, correctly_rounded) == 0.0


@pytest.mark.parametrize("merge", ["merge_qlora", "peft.merge_and_unload"])
def test_model_level_merges_of_a_bf16_model_round_once(merge):
    model = nudge(apply_qlora(tiny_lm().to(torch.bfloat16), CONFIG, blocksize=32), std=0.3)
    targets = {n: (m.dequantized_weight(torch.float32) + m.delta_weight()).to(torch.bfloat16)
               for n, m in lora_layers(model).items()}
    merged = merge_qlora(model) if merge == "merge_qlora" else lorakit.merge_and_unload(model)
    for name, want in targets.items():
        got = merged.get_submodule(name).weight.detach()
        assert got.dtype == torch.bfloat16 and _differing_fraction(got, want) == 0.0, name


# --------------------------------------------------------------------------- check_merge, atomic merges
def test_check_merge_refuses_nan_adapters_and_overflow():
    layer = make_layer()
    layer.check_merge()
    layer.check_merge(requantize=True)
    with torch.no_grad():
        layer.lora_B[0, 0] = float("nan")
    with pytest.raises(ValueError, match="lora_A/lora_B hold NaN or inf"):
        layer.check_merge()
    layer = make_layer()
    with torch.no_grad():
        layer.lora_B.fill_(1e6)  # s B A of size ~1e5: finite in fp32, inf in fp16
    layer.check_merge(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"non-finite weights \(stored in torch.float16\)"):
        layer.check_merge(dtype=torch.float16)
    before = snapshot(layer)
    with pytest.raises(ValueError, match="non-finite"):
        layer.merge(dtype=torch.float16)
    assert_unchanged(layer, before)
    assert not layer.merged


@pytest.mark.parametrize("merge", ["merge_qlora", "requantize", "peft.merge_lora", "peft.merge_and_unload"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bad_last_layer_stops_every_merge_before_the_first_layer(backend, merge):
    model = qlora_lm(backend)
    last = sorted(lora_layers(model))[-1]
    with torch.no_grad():
        lora_layers(model)[last].lora_B[0, 0] = float("inf")
    before = snapshot(model)
    with pytest.raises(ValueError, match="NaN or inf"):
        if merge == "merge_qlora":
            merge_qlora(model)
        elif merge == "requantize":
            merge_qlora(model, requantize=True)
        elif merge == "peft.merge_lora":
            merge_lora(model)
        else:
            lorakit.merge_and_unload(model)
    assert_unchanged(model, before)
    assert not any(m.merged for m in lora_layers(model).values())


def test_merge_qlora_names_the_failing_layer():
    model = qlora_lm()
    with torch.no_grad():
        lora_layers(model)["layers.1.mlp.up_proj"].lora_A[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"layer 'layers\.1\.mlp\.up_proj'"):
        merge_qlora(model)


def test_unmerge_restores_the_4bit_base_exactly():
    layer = make_layer()
    x = torch.randn(4, 128)
    before = layer(x)
    base = layer.base
    for requantize in (False, True):
        layer.merge(requantize=requantize)
        layer.unmerge()
        assert layer.base is base
        torch.testing.assert_close(layer(x), before, rtol=0, atol=0)


def test_merge_error_still_reports_the_bf16_merge():
    from lorakit.qlora import merge_error

    layer = make_layer(std=0.01)
    err = merge_error(layer, torch.randn(16, 128))
    twin = copy.deepcopy(layer)
    twin.merge(dtype=torch.bfloat16)
    assert err["weight_rel_bf16"] > 0  # bf16 rounding, not the fp32 merge
    assert err["weight_rel_bf16"] < 5e-3 < err["weight_rel_requantized"]
