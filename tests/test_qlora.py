"""Tests of lorakit.qlora (notebook 08): QLoRALinear, merge and its error, apply_qlora, adapters, bad input.

Cross-checks against bitsandbytes and PEFT live in tests/test_qlora_crosscheck.py.
"""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from builders import tiny_lm
from torch import nn

from lorakit import nf4
from lorakit.data import caesar_task, lm_loss
from lorakit.lora import LoRALinear, MergeWarning
from lorakit.memory import saved_activation_bytes
from lorakit.models import load_tiny_lm
from lorakit.peft import (
    LoRAConfig,
    adapter_state_dict,
    apply_lora,
    find_target_modules,
    load_adapter,
    lora_layers,
    save_adapter,
    trainable_parameters,
)
from lorakit.qlora import NF4Linear, QLoRALinear, apply_qlora, merge_and_unload, merge_error, merge_qlora
from lorakit.training import seed_everything, train


def make_linear(in_f: int = 128, out_f: int = 64, bias: bool = True, seed: int = 0, dtype=torch.float32) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f, bias=bias).to(dtype)


def qlora(linear: nn.Linear | None = None, b_std: float = 0.05, **kwargs) -> QLoRALinear:
    """A QLoRALinear with a random non-zero B (with B = 0 the bypass would be invisible)."""
    layer = QLoRALinear(copy.deepcopy(linear or make_linear()), r=4, alpha=8, **kwargs)
    with torch.no_grad():
        layer.lora_B.normal_(0.0, b_std, generator=torch.Generator().manual_seed(1))
    return layer


def reference_forward(layer: QLoRALinear, x: torch.Tensor) -> torch.Tensor:
    """Eq. 1 written with plain autograd ops on the dequantized weight, PEFT's dtype handling."""
    cd = layer.compute_dtype
    w = layer.dequantized_weight(cd)
    bias = None if layer.base.bias is None else layer.base.bias.to(cd)
    base = F.linear(x.to(cd), w, bias).to(x.dtype)
    a = layer.lora_A
    bypass = (x.to(a.dtype) @ a.t()) @ layer.lora_B.t() * layer.scaling
    return base + bypass.to(x.dtype)


# --------------------------------------------------------------------------- the layer
def test_is_a_lora_layer_with_frozen_nf4_base():
    layer = qlora()
    assert isinstance(layer, LoRALinear)
    assert isinstance(layer.base, NF4Linear)
    assert layer.lora_A.shape == (4, 128) and layer.lora_B.shape == (64, 4)
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
    assert layer.scaling == 2.0 and layer.in_features == 128 and layer.out_features == 64
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A", "lora_B"}
    assert not any(p.is_floating_point() and p.numel() == 128 * 64 for p in layer.base.parameters())
    assert layer.base.quantized.double_quant and layer.base.quantized.blocksize == 64
    assert "backend='lorakit'" in repr(layer)


def test_rslora_scaling_and_bf16_adapters():
    layer = QLoRALinear(make_linear(), r=4, alpha=8, rslora=True, adapter_dtype=torch.bfloat16)
    assert layer.scaling == pytest.approx(4.0)
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.bfloat16
    x = torch.randn(3, 128)
    assert layer(x).dtype == torch.float32


def test_full_precision_weight_is_not_kept():
    linear = make_linear()
    ref = weakref.ref(linear.weight)
    layer = QLoRALinear(linear)
    del linear
    gc.collect()
    assert ref() is None, "QLoRALinear must not keep the full-precision weight alive"
    assert layer.storage_bytes < 128 * 64 * 2 / 3  # 4 bits + constants, far below bf16's 2 bytes


def test_caller_layer_is_not_modified():
    linear = make_linear()
    before = linear.weight.detach().clone()
    QLoRALinear(linear, init="pissa")
    assert torch.equal(linear.weight, before)


def test_dequantized_weight_is_lorakit_nf4():
    linear = make_linear()
    layer = QLoRALinear(copy.deepcopy(linear), blocksize=128, double_quant=False)
    q = nf4.quantize_nf4(linear.weight.detach(), blocksize=128, double_quant=False)
    assert torch.equal(layer.base.quantized.packed, q.packed)
    assert torch.equal(layer.dequantized_weight(torch.float32), nf4.dequantize_nf4(q, dtype=torch.float32))
    assert layer.dequantized_weight().dtype == torch.bfloat16
    rel = (layer.dequantized_weight(torch.float32) - linear.weight).norm() / linear.weight.norm()
    assert 0 < rel < 0.15  # NF4 is lossy, but not wildly


@pytest.mark.parametrize("compute_dtype", [torch.bfloat16, torch.float32, torch.float16])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_forward_matches_eq1(compute_dtype, x_dtype):
    layer = qlora(compute_dtype=compute_dtype)
    x = torch.randn(2, 5, 128).to(x_dtype)
    out = layer(x)
    assert out.dtype == x_dtype and out.shape == (2, 5, 64)
    torch.testing.assert_close(out, reference_forward(layer, x), rtol=0, atol=0)


def test_b_zero_gives_the_quantized_base():
    layer = QLoRALinear(make_linear())
    x = torch.randn(7, 128)
    torch.testing.assert_close(layer(x), layer.base(x), rtol=0, atol=0)


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16])
def test_gradients_match_autograd_reference(compute_dtype):
    layer = qlora(compute_dtype=compute_dtype)
    twin = copy.deepcopy(layer)
    x = torch.randn(6, 128, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    layer(x).square().sum().backward()
    reference_forward(twin, x2).square().sum().backward()
    tol = {"rtol": 1e-5, "atol": 1e-5} if compute_dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(x.grad, x2.grad, **tol)
    torch.testing.assert_close(layer.lora_A.grad, twin.lora_A.grad, **tol)
    torch.testing.assert_close(layer.lora_B.grad, twin.lora_B.grad, **tol)
    assert all(p.grad is None for p in layer.base.parameters())


def test_backward_does_not_keep_the_dequantized_weight():
    layer = qlora(make_linear(256, 256))
    x = torch.randn(4, 256, requires_grad=True)
    saved = saved_activation_bytes(layer, lambda: layer(x))
    dense = 256 * 256 * 2  # one bf16 copy of W
    assert saved < dense / 4, f"autograd saved {saved} bytes; a dequantized weight would be {dense}"


def test_dropout_acts_on_the_bypass_only():
    layer = qlora(dropout=0.5)
    x = torch.randn(8, 128)
    layer.eval()
    torch.testing.assert_close(layer(x), reference_forward(layer, x), rtol=0, atol=0)
    layer.train()
    torch.manual_seed(0)
    a, b = layer(x), layer(x)
    assert not torch.equal(a, b)
    layer.lora_B.data.zero_()
    torch.testing.assert_close(layer(x), layer.base(x), rtol=0, atol=0)


def test_pissa_puts_top_singular_part_in_adapters():
    linear = make_linear()
    layer = QLoRALinear(copy.deepcopy(linear), r=4, alpha=4, init="pissa")
    assert layer.init == "pissa"
    exact = linear.weight.detach()
    recon = layer.dequantized_weight(torch.float32) + layer.delta_weight()
    plain = QLoRALinear(copy.deepcopy(linear), r=4, alpha=4).dequantized_weight(torch.float32)
    # QPiSSA: quantizing the residual loses less than quantizing W0 itself
    assert (recon - exact).norm() < (plain - exact).norm()
    layer.reset_lora_parameters("kaiming")  # the other inits re-initialise as LoRALinear does
    assert torch.count_nonzero(layer.lora_B) == 0


# --------------------------------------------------------------------------- merge
def test_merge_dense_bf16_and_exact_unmerge():
    layer = qlora()
    x = torch.randn(9, 128)
    before = layer(x)
    new = layer.merge(dtype=torch.bfloat16)  # the default is the quantized weight's dtype (fp32 here): see below
    assert layer.merged and type(new) is nn.Linear and new is layer.base
    assert new.weight.dtype == torch.bfloat16 and not new.weight.requires_grad
    torch.testing.assert_close(new.weight.float(), layer._unmerged_base.dequantized_weight(torch.float32)
                               + layer.delta_weight(), rtol=1e-2, atol=1e-2)
    merged_out = layer(x)
    assert merged_out.dtype == torch.float32
    assert ((merged_out - before).norm() / before.norm()).item() < 1e-2
    with pytest.warns(MergeWarning):
        layer.merge()
    layer.unmerge()
    assert not layer.merged and isinstance(layer.base, NF4Linear)
    torch.testing.assert_close(layer(x), before, rtol=0, atol=0)
    with pytest.warns(MergeWarning):
        layer.unmerge()


def test_merge_requantized_stays_4bit():
    layer = qlora()
    x = torch.randn(9, 128)
    before = layer(x)
    new = layer.merge(requantize=True)
    assert isinstance(new, NF4Linear)
    expected = nf4.quantize_nf4(layer._unmerged_base.dequantized_weight(torch.float32) + layer.delta_weight(),
                                blocksize=64, double_quant=True)
    assert torch.equal(new.quantized.packed, expected.packed)
    rel = ((layer(x) - before).norm() / before.norm()).item()
    assert 0 < rel < 0.3


def test_merge_dtype_fp32_is_exact_to_rounding():
    layer = qlora(compute_dtype=torch.float32)
    x = torch.randn(5, 128)
    before = layer(x)
    layer.merge(dtype=torch.float32)
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5)


def test_merge_error_report():
    layer = qlora(b_std=0.01)
    x = torch.randn(32, 128)
    state = copy.deepcopy(layer.state_dict())
    err = merge_error(layer, x)
    assert set(err) == {"delta_rel", "output_rel_bf16", "weight_rel_bf16", "weight_err_over_delta_bf16",
                        "output_rel_requantized", "weight_rel_requantized", "weight_err_over_delta_requantized"}
    assert not layer.merged and all(torch.equal(v, state[k]) for k, v in layer.state_dict().items())
    # bf16 keeps ~8 bits of mantissa: far below one NF4 step; requantizing costs about one NF4 step
    assert err["weight_rel_bf16"] < 5e-3 < err["weight_rel_requantized"]
    assert err["output_rel_bf16"] < err["output_rel_requantized"]
    # a small update is swamped by the requantization error (why PEFT warns when merging into 4 bits)
    assert err["weight_err_over_delta_requantized"] > 1 > err["weight_err_over_delta_bf16"]


# --------------------------------------------------------------------------- model level
def test_apply_qlora_targets_like_apply_lora_and_trains_only_lora():
    model = apply_qlora(tiny_lm(), LoRAConfig(r=4, alpha=8, target_modules="all-linear"))
    expected = find_target_modules(tiny_lm(), "all-linear")
    assert sorted(lora_layers(model)) == sorted(expected)
    assert all(isinstance(m, QLoRALinear) for m in lora_layers(model).values())
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    n_lora = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
    assert trainable_parameters(model)[0] == n_lora
    ids = torch.randint(0, 32, (2, 8))
    loss = model(ids).float().square().mean()
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == set(trainable)


def test_trainable_parameters_counts_the_4bit_base_as_weights():
    config = LoRAConfig(r=4, alpha=8, target_modules="all-linear")
    qlora, lora = apply_qlora(tiny_lm(), config), apply_lora(tiny_lm(), config)
    plain_total = sum(p.numel() for p in tiny_lm().parameters())
    assert trainable_parameters(qlora) == trainable_parameters(lora)
    assert trainable_parameters(qlora)[1] == plain_total + trainable_parameters(lora)[0]


def test_train_on_caesar_lowers_the_loss():
    seed_everything(0)
    model = apply_qlora(load_tiny_lm(), LoRAConfig(r=8, alpha=16, target_modules="all-linear"))
    data, _ = caesar_task(n_train=128, n_eval=8)
    before = lm_loss(model(data.input_ids), data.targets).item()
    hist = train(model, data, steps=25, lr=3e-3, batch_size=32)
    with torch.no_grad():
        after = lm_loss(model(data.input_ids), data.targets).item()
    assert after < 0.8 * before, (before, after, hist.loss[:3], hist.loss[-3:])


def test_adapter_round_trip_and_keys_match_lora(tmp_path):
    config = LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    model = apply_qlora(tiny_lm(), config)
    for layer in lora_layers(model).values():
        torch.nn.init.normal_(layer.lora_B, std=0.1)
    save_adapter(model, tmp_path / "qlora")
    lora_model = apply_lora(tiny_lm(), config)
    assert sorted(adapter_state_dict(model)) == sorted(adapter_state_dict(lora_model))
    assert {k: v.shape for k, v in adapter_state_dict(model).items()} == {
        k: v.shape for k, v in adapter_state_dict(lora_model).items()}

    fresh = apply_qlora(tiny_lm(), config)  # same base, fresh adapters, then hot-swap the saved ones
    load_adapter(fresh, tmp_path / "qlora")
    assert all(isinstance(m, QLoRALinear) for m in lora_layers(fresh).values())
    ids = torch.randint(0, 32, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids), model(ids), rtol=0, atol=0)
    for key, value in adapter_state_dict(model).items():
        assert torch.equal(adapter_state_dict(fresh)[key], value)


def test_merge_qlora_model_level():
    config = LoRAConfig(r=4, alpha=8, target_modules="all-linear")
    model = apply_qlora(tiny_lm(), config, compute_dtype=torch.float32)
    for layer in lora_layers(model).values():
        torch.nn.init.normal_(layer.lora_B, std=0.05)
    ids = torch.randint(0, 32, (2, 8))
    with torch.no_grad():
        before = model(ids)
    dense = merge_and_unload(copy.deepcopy(model), dtype=torch.float32)
    assert not lora_layers(dense) and not hasattr(dense, "lora_config")
    assert all(type(dense.get_submodule(n)) is nn.Linear for n in lora_layers(model))
    requant = merge_qlora(copy.deepcopy(model), requantize=True)
    assert all(isinstance(requant.get_submodule(n), NF4Linear) for n in lora_layers(model))
    bf16 = merge_qlora(copy.deepcopy(model))
    assert all(bf16.get_submodule(n).weight.dtype == torch.float32 for n in lora_layers(model))  # compute dtype
    with torch.no_grad():
        torch.testing.assert_close(dense(ids), before, rtol=1e-4, atol=1e-4)
        err_requant = (requant(ids) - before).norm() / before.norm()
    assert 0 < err_requant < 0.5
    with pytest.raises(ValueError, match="no QLoRA layers"):
        merge_qlora(dense)


def test_model_to_keeps_the_4bit_format():
    model = apply_qlora(tiny_lm(), LoRAConfig(r=2, target_modules=["q_proj"]))
    layer = next(iter(lora_layers(model).values()))
    absmax_before = copy.deepcopy(layer.base.quantized)
    model.to(torch.bfloat16)
    assert layer.base.quantized.code.dtype == torch.float32
    assert torch.equal(layer.base.quantized.packed, absmax_before.packed)
    torch.testing.assert_close(layer.dequantized_weight(torch.float32),
                               nf4.dequantize_4bit(absmax_before, dtype=torch.float32), rtol=0, atol=0)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"backend": "bnb"}, ValueError, "backend"),
        ({"backend": None}, TypeError, "backend"),
        ({"compute_dtype": "bf16"}, TypeError, "compute_dtype"),
        ({"compute_dtype": torch.float64}, ValueError, "compute_dtype"),
        ({"compute_dtype": torch.int8}, ValueError, "compute_dtype"),
        ({"double_quant": 1}, TypeError, "double_quant"),
        ({"blocksize": "64"}, TypeError, "blocksize"),
        ({"blocksize": 48}, ValueError, "blocksize"),
        ({"blocksize": 16}, ValueError, "blocksize"),
        ({"blocksize": 48, "backend": "bitsandbytes"}, ValueError, "blocksize"),
        ({"adapter_dtype": torch.int32}, ValueError, "adapter_dtype"),
        ({"adapter_dtype": "fp32"}, TypeError, "adapter_dtype"),
        ({"r": 0}, ValueError, "r must"),
        ({"alpha": -1}, ValueError, "alpha"),
        ({"dropout": 1.0}, ValueError, "dropout"),
        ({"init": "svd"}, ValueError, "init"),
        ({"init": "pissa", "r": 65}, ValueError, "PiSSA"),
    ],
)
def test_bad_layer_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        QLoRALinear(make_linear(), **kwargs)


def test_bad_base():
    with pytest.raises(TypeError, match="base"):
        QLoRALinear(nn.Conv1d(4, 4, 1))
    with pytest.raises(TypeError, match="base"):
        QLoRALinear(nn.Linear(64, 64).double())
    with pytest.raises(TypeError, match="base"):
        QLoRALinear(QLoRALinear(make_linear()))  # a LoRA layer is not an nn.Linear


def test_bad_model_level_arguments():
    with pytest.raises(TypeError, match="model"):
        apply_qlora("model", LoRAConfig())
    with pytest.raises(TypeError, match="config"):
        apply_qlora(tiny_lm(), {"r": 8})
    with pytest.raises(ValueError, match="matched no nn.Linear"):
        apply_qlora(tiny_lm(), LoRAConfig(target_modules=["nope"]))
    model = tiny_lm()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="blocksize"):
        apply_qlora(model, LoRAConfig(target_modules="all-linear"), blocksize=100)
    assert not lora_layers(model) and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="backend"):
        apply_qlora(model, LoRAConfig(), backend="gptq")
    apply_qlora(model, LoRAConfig())
    with pytest.raises(ValueError, match="already has adapter layers"):
        apply_qlora(model, LoRAConfig())


def test_bad_merge_arguments():
    layer = qlora()
    with pytest.raises(TypeError, match="requantize"):
        layer.merge(requantize="yes")
    with pytest.raises(TypeError, match="dtype"):
        layer.merge(dtype="bf16")
    with pytest.raises(TypeError, match="layer"):
        merge_error(make_linear(), torch.randn(2, 128))
    with pytest.raises(TypeError, match="x"):
        merge_error(layer, torch.ones(2, 128, dtype=torch.long))
    with pytest.raises(ValueError, match="features"):
        merge_error(layer, torch.randn(2, 127))
    layer.merge()
    with pytest.raises(ValueError, match="merged"):
        merge_error(layer, torch.randn(2, 128))
    with pytest.raises(RuntimeError, match="merged"):
        layer.merged_weight()


def test_nf4linear_bad_input():
    q = nf4.quantize_nf4(torch.randn(8, 64))
    with pytest.raises(TypeError, match="quantized"):
        NF4Linear(torch.randn(8, 64), None)
    with pytest.raises(ValueError, match="bias"):
        NF4Linear(q, torch.zeros(7))
    with pytest.raises(ValueError, match="2-D"):
        NF4Linear(nf4.quantize_nf4(torch.randn(64)), None)


# --------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["lorakit", "bitsandbytes"])
def test_cuda_both_backends(backend):
    linear = make_linear(256, 128)
    cpu = qlora(linear, backend="lorakit")
    layer = qlora(linear.cuda(), backend=backend)
    assert layer.lora_A.is_cuda and layer.dequantized_weight().is_cuda
    torch.testing.assert_close(layer.dequantized_weight(torch.float32).cpu(), cpu.dequantized_weight(torch.float32),
                               rtol=0, atol=0)
    x = torch.randn(4, 256, device="cuda", requires_grad=True)
    out = layer(x)
    torch.testing.assert_close(out.detach().cpu(), cpu(x.detach().cpu()), rtol=2e-2, atol=2e-2)
    out.square().mean().backward()
    assert layer.lora_A.grad.is_cuda and x.grad is not None
    model = apply_qlora(tiny_lm().cuda(), LoRAConfig(r=4, target_modules="all-linear"), backend=backend)
    ids = torch.randint(0, 32, (2, 8), device="cuda")
    model(ids).float().square().mean().backward()
    assert all(m.lora_B.grad is not None for m in lora_layers(model).values())
    moved = QLoRALinear(make_linear(), backend="lorakit").cuda()
    assert moved.base.quantized.device.type == "cuda" and moved(torch.randn(2, 128, device="cuda")).is_cuda
