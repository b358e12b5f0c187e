"""QLoRA on FP4 and INT4 bases (``quant_type``), next to NF4: the comparison of the capstone's data-type table."""

from __future__ import annotations

import pytest
import torch
from builders import tiny_lm
from safetensors.torch import load_file, save_file
from snapshot import assert_unchanged, snapshot

import lorakit
from lorakit.nf4 import dequantize_4bit, fp4_code, int4_code, nf4_code, quantize_4bit
from lorakit.qlora import QLoRALinear, apply_qlora, merge_qlora

CODES = {"nf4": nf4_code, "fp4": fp4_code, "int4": int4_code}
QV = ["q_proj", "v_proj"]


@pytest.mark.parametrize("quant_type", ["nf4", "fp4", "int4"])
def test_the_base_holds_the_chosen_code(quant_type):
    torch.manual_seed(0)
    base = torch.nn.Linear(64, 48)
    layer = QLoRALinear(base, r=4, blocksize=32, double_quant=False, compute_dtype=torch.float32,
                        quant_type=quant_type)
    want = dequantize_4bit(quantize_4bit(base.weight.detach(), CODES[quant_type](), blocksize=32))
    assert torch.equal(layer.dequantized_weight(torch.float32), want)
    assert f"quant_type='{quant_type}'" in repr(layer)


def test_error_grows_from_nf4_to_int4_and_fp4_on_gaussian_weights():
    torch.manual_seed(0)
    base = torch.nn.Linear(512, 512)
    torch.nn.init.normal_(base.weight, std=0.02)
    err = {}
    for quant_type in CODES:
        layer = QLoRALinear(base, r=2, blocksize=64, compute_dtype=torch.float32, quant_type=quant_type)
        err[quant_type] = (layer.dequantized_weight(torch.float32) - base.weight).norm().item()
    assert err["nf4"] < err["int4"] and err["nf4"] < err["fp4"]


@pytest.mark.parametrize("quant_type", ["fp4", "int4"])
@pytest.mark.parametrize("requantize", [False, True])
def test_model_trains_merges_and_round_trips(tmp_path, quant_type, requantize):
    torch.manual_seed(0)
    model = apply_qlora(tiny_lm(), lorakit.LoRAConfig(r=4, target_modules=QV), blocksize=32, quant_type=quant_type)
    ids = torch.randint(0, 32, (2, 8))
    loss = model(ids).float().square().mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        for layer in lorakit.lora_layers(model).values():
            layer.lora_B.normal_(std=0.02)
    want = model(ids)
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    fresh = apply_qlora(tiny_lm(1), lorakit.LoRAConfig(r=4, target_modules=QV), blocksize=32, quant_type=quant_type)
    fresh.load_state_dict(load_file(tmp_path / "m.safetensors"))
    assert torch.equal(fresh(ids), want)
    merged = merge_qlora(model, requantize=requantize)
    tol = 0.5 if requantize else 1e-2  # a new 4-bit rounding, or bf16 compute vs the fp32 merge
    assert (merged(ids) - want).abs().max() <= tol * want.abs().max()


def test_a_state_dict_of_another_code_is_refused():
    fp4 = apply_qlora(tiny_lm(), lorakit.LoRAConfig(r=2, target_modules=QV), blocksize=32, quant_type="fp4")
    nf4 = apply_qlora(tiny_lm(), lorakit.LoRAConfig(r=2, target_modules=QV), blocksize=32, quant_type="nf4")
    before = snapshot(nf4)
    with pytest.raises(ValueError):
        nf4.load_state_dict(fp4.state_dict())
    assert_unchanged(nf4, before)


@pytest.mark.parametrize(("quant_type", "backend", "exc", "message"), [
    ("nf8", "lorakit", ValueError, "quant_type must be one of"),
    (4, "lorakit", TypeError, "quant_type must be one of"),
    (None, "lorakit", TypeError, "quant_type must be one of"),
    ("int4", "bitsandbytes", ValueError, "quant_type='int4' is not a bitsandbytes 4-bit type"),
])
def test_bad_quant_types_are_refused_and_the_model_unchanged(quant_type, backend, exc, message):
    model = tiny_lm()
    before = snapshot(model)
    with pytest.raises(exc, match=message):
        apply_qlora(model, lorakit.LoRAConfig(r=2, target_modules=QV), blocksize=32, backend=backend,
                    quant_type=quant_type)
    assert_unchanged(model, before)
    with pytest.raises(exc, match=message):
        QLoRALinear(torch.nn.Linear(32, 32), r=2, blocksize=32, backend=backend, quant_type=quant_type)


def test_bitsandbytes_fp4_equals_lorakit_fp4():
    pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    base = torch.nn.Linear(64, 32)
    ours = QLoRALinear(base, r=2, blocksize=64, compute_dtype=torch.float32, quant_type="fp4")
    theirs = QLoRALinear(base, r=2, blocksize=64, compute_dtype=torch.float32, quant_type="fp4", backend="bitsandbytes")
    assert torch.equal(ours.dequantized_weight(torch.float32), theirs.dequantized_weight(torch.float32))
