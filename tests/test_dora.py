"""Unit tests for lorakit.dora: DoRALinear and dora_linear (notebook 09).

The reference formulas are written here from the DoRA paper (Liu et al. 2024, arXiv:2402.09353, eqs. 2 and 5,
section 4.3): ``W' = m * V / ||V||`` row-wise with ``V = W0 + s B A``; the PEFT cross-checks live in
tests/test_dora_crosscheck.py.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import lorakit
from lorakit import LoRAConfig, LoRALinear, MergeWarning
from lorakit.dora import DoRALinear, dora_linear, dora_weight_norm


def trained_layer(d_in: int = 12, d_out: int = 7, r: int = 3, alpha: float = 6, dtype=torch.float32, seed: int = 0,
                  **kw) -> DoRALinear:
    """A DoRA layer that looks trained: nonzero B and a magnitude moved away from ||W0||."""
    torch.manual_seed(seed)
    layer = DoRALinear(nn.Linear(d_in, d_out).to(dtype), r=r, alpha=alpha, **kw)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.3)
        layer.magnitude.mul_(1 + 0.3 * torch.randn(d_out, dtype=layer.magnitude.dtype))
    return layer


def reference_forward(layer: DoRALinear, x: torch.Tensor) -> torch.Tensor:
    """``W' x + b`` with ``W'`` built from the paper's formula (fp64)."""
    W0, A, B = (t.detach().double() for t in (layer.base.weight, layer.lora_A, layer.lora_B))
    V = W0 + layer.scaling * B @ A
    W = layer.magnitude.detach().double()[:, None] * V / V.norm(dim=1, keepdim=True)
    return x.double() @ W.t() + layer.base.bias.detach().double()


# ---------------------------------------------------------------- initialisation


def test_magnitude_is_the_row_norm_of_w0_per_output():
    torch.manual_seed(0)
    base = nn.Linear(10, 6)  # non-square: a per-input (dim=0) norm would have the wrong length
    layer = DoRALinear(base, r=2, alpha=4)
    assert isinstance(layer, LoRALinear) and isinstance(layer.magnitude, nn.Parameter)
    assert layer.magnitude.shape == (6,) and layer.magnitude.requires_grad
    want = torch.stack([base.weight[i].norm() for i in range(6)])
    assert torch.allclose(layer.magnitude, want, rtol=1e-6, atol=0)
    assert not any(p.requires_grad for p in layer.base.parameters())


@pytest.mark.parametrize("init", ["kaiming", "gaussian", "zeros", "pissa"])
def test_identity_start(init):
    torch.manual_seed(1)
    base = nn.Linear(9, 5)
    x = torch.randn(4, 9)
    with torch.no_grad():
        want = base(x).clone()
    layer = DoRALinear(base, r=2, alpha=4, init=init)
    with torch.no_grad():
        assert torch.allclose(layer(x), want, rtol=0, atol=1e-6)
        assert torch.allclose(layer.dora_factor(), torch.ones(5), atol=1e-6)


def test_trainable_parameter_count():
    layer = DoRALinear(nn.Linear(12, 7), r=3, alpha=3)
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == 3 * (12 + 7) + 7
    model = lorakit.apply_lora(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)),
                               LoRAConfig(r=2, target_modules=["0", "2"], use_dora=True))
    assert lorakit.trainable_parameters(model)[0] == 2 * (8 + 8) + 8 + 2 * (8 + 4) + 4


def test_reset_reinitialises_the_magnitude():
    layer = trained_layer()
    layer.reset_lora_parameters("kaiming")
    assert torch.allclose(layer.magnitude, layer.base.weight.norm(dim=1), rtol=1e-6)


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("bias", [True, False])
def test_forward_equals_the_weight_normalised_formula(bias):
    torch.manual_seed(2)
    layer = trained_layer()
    if not bias:
        layer.base.bias = None
    x = torch.randn(2, 5, 12)
    with torch.no_grad():
        got = layer(x)
    W0, A, B = layer.base.weight, layer.lora_A, layer.lora_B
    V = (W0 + layer.scaling * B @ A).detach().double()
    W = layer.magnitude.detach().double()[:, None] * V / V.norm(dim=1, keepdim=True)
    want = x.double() @ W.t() + (layer.base.bias.detach().double() if bias else 0)
    assert got.shape == (2, 5, 7)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-6)


def test_effective_weight_and_factor():
    layer = trained_layer()
    x = torch.randn(6, 12)
    with torch.no_grad():
        W = layer.effective_weight()
        assert torch.allclose(W.norm(dim=1), layer.magnitude, rtol=1e-5)  # the magnitude is the row norm of W'
        assert torch.allclose(x @ W.t() + layer.base.bias, layer(x), rtol=1e-5, atol=1e-6)


def test_dropout_semantics_are_peft_eq3():
    """Training with dropout: ``W0 x + b + (f - 1) W0 x_d + f s B A x_d`` with the same dropout draw."""
    layer = trained_layer(dropout=0.5).train()
    x = torch.randn(8, 12)
    torch.manual_seed(5)
    got = layer(x)
    torch.manual_seed(5)
    x_d = nn.functional.dropout(x, 0.5, training=True)
    with torch.no_grad():
        f = layer.magnitude / dora_weight_norm(layer.base.weight, layer.lora_A, layer.lora_B, layer.scaling)
        W0, b = layer.base.weight, layer.base.bias
        bypass = x_d @ layer.lora_A.t() @ layer.lora_B.t()
        want = x @ W0.t() + b + (f - 1) * (x_d @ W0.t()) + f * layer.scaling * bypass
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, layer.eval()(x), atol=1e-3)  # dropout acted


# ---------------------------------------------------------------- gradients: the detached norm (paper, section 4.3)


def hand_gradients(layer: DoRALinear, x: torch.Tensor, G: torch.Tensor, detach_norm: bool):
    """dL/dm, dL/dA, dL/dB of ``L = sum(G * h)`` derived by hand (notebook 09, eqs. 5-7), fp64."""
    W0, A, B, m = (t.detach().double() for t in (layer.base.weight, layer.lora_A, layer.lora_B, layer.magnitude))
    x, G, s = x.double(), G.double(), layer.scaling
    V = W0 + s * B @ A
    n = V.norm(dim=1)
    Vx = x @ V.t()  # [tokens, out]
    grad_m = (G * Vx).sum(0) / n
    grad_W = G.t() @ x  # dL/dW' for h = W' x + b
    grad_V = (m / n)[:, None] * grad_W  # norm treated as a constant
    if not detach_norm:  # + the path through ||V||: d(m V_i/||V_i||)/dV_i = (m/||V_i||)(I - u u^T), u = V_i/||V_i||
        u = V / n[:, None]
        grad_V = grad_V - (m / n)[:, None] * (grad_W * u).sum(1, keepdim=True) * u
    return grad_m, s * B.t() @ grad_V, s * grad_V @ A.t()


@pytest.mark.parametrize("detach_norm", [True, False])
def test_gradients_equal_the_hand_derivation(detach_norm):
    layer = trained_layer()
    x, G = torch.randn(10, 12), torch.randn(10, 7)
    out = dora_linear(x, layer.base.weight, layer.base.bias, layer.lora_A, layer.lora_B, layer.magnitude,
                      layer.scaling, detach_norm=detach_norm)
    (out * G).sum().backward()
    grad_m, grad_A, grad_B = hand_gradients(layer, x, G, detach_norm)
    for got, want in ((layer.magnitude.grad, grad_m), (layer.lora_A.grad, grad_A), (layer.lora_B.grad, grad_B)):
        assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-6)


def test_layer_detaches_the_norm_and_it_matters_for_A_B_only():
    layer = trained_layer()
    x, G = torch.randn(10, 12), torch.randn(10, 7)
    (layer(x) * G).sum().backward()
    detached = [p.grad.clone() for p in (layer.magnitude, layer.lora_A, layer.lora_B)]
    layer.zero_grad()
    full = dora_linear(x, layer.base.weight, layer.base.bias, layer.lora_A, layer.lora_B, layer.magnitude,
                       layer.scaling, detach_norm=False)
    (full * G).sum().backward()
    exact = [p.grad for p in (layer.magnitude, layer.lora_A, layer.lora_B)]
    assert torch.allclose(detached[0], exact[0], rtol=1e-5, atol=1e-7)  # m never enters the norm
    assert not torch.allclose(detached[1], exact[1], rtol=1e-2)
    assert not torch.allclose(detached[2], exact[2], rtol=1e-2)


def test_gradcheck_of_the_undetached_form_float64():
    torch.manual_seed(3)
    W0, b = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    A = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    B = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    m = torch.rand(5, dtype=torch.float64).add(0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda *t: dora_linear(*t[:1], W0, b, *t[1:], 1.5, detach_norm=False),
                                    (x, A, B, m))
    # the layer's (detached) form is the exact gradient for x and m: m and x never enter the norm
    assert torch.autograd.gradcheck(lambda xx, mm: dora_linear(xx, W0, b, A.detach(), B.detach(), mm, 1.5),
                                    (x, m))


# ---------------------------------------------------------------- merge / unmerge


def test_merge_unmerge_round_trip_and_idempotence():
    layer = trained_layer(d_in=64, d_out=48, r=4)
    x = torch.randn(16, 64)
    W0 = layer.base.weight.detach().clone()
    with torch.no_grad():
        y, W_eff, ref = layer(x), layer.effective_weight(), reference_forward(layer, x)
        layer.merge()
        assert layer.merged
        assert torch.allclose(layer.base.weight, W_eff, rtol=0, atol=1e-6)
        assert torch.equal(layer.effective_weight(), layer.base.weight)
        assert (layer(x) - y).abs().max().item() <= 1e-5
        assert torch.allclose(layer(x).double(), ref, rtol=1e-5, atol=1e-5)
    merged = layer.base.weight.detach().clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer.merge()
    assert [w.category for w in caught] == [MergeWarning] and torch.equal(layer.base.weight, merged)
    layer.unmerge()
    assert not layer.merged
    assert (layer.base.weight - W0).abs().max().item() <= 1e-6  # fp32 round-trip error (measured ~1e-7)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer.unmerge()
    assert [w.category for w in caught] == [MergeWarning]
    with torch.no_grad():
        assert (layer(x) - y).abs().max().item() <= 1e-5


def test_unmerge_uses_the_factor_of_the_merge():
    layer = trained_layer()
    W0 = layer.base.weight.detach().clone()
    layer.merge()
    with torch.no_grad():
        layer.magnitude.mul_(2.0)  # edited after the merge: the merged weight does not know it
    layer.unmerge()
    assert torch.allclose(layer.base.weight, W0, atol=1e-6)


def test_merge_and_unload_gives_plain_linear():
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    model = lorakit.apply_lora(model, LoRAConfig(r=2, target_modules=["0", "2"], use_dora=True))
    for layer in lorakit.lora_layers(model).values():
        with torch.no_grad():
            layer.lora_B.normal_(0, 0.3)
            layer.magnitude.mul_(1.3)
    x = torch.randn(5, 8)
    with torch.no_grad():
        y = model(x)
        dense = lorakit.merge_and_unload(model)
        assert all(type(m) is nn.Linear for m in (dense[0], dense[2]))
        assert torch.allclose(dense(x), y, atol=1e-5)


def test_merge_refuses_a_zero_magnitude():
    layer = trained_layer()
    with torch.no_grad():
        layer.magnitude[2] = 0.0
    W0 = layer.base.weight.detach().clone()
    with pytest.raises(ValueError, match="could not be undone"):
        layer.merge()
    assert not layer.merged and torch.equal(layer.base.weight, W0)


# ---------------------------------------------------------------- dtypes and devices


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_base(dtype):
    layer = trained_layer(dtype=dtype)
    assert layer.lora_A.dtype == layer.magnitude.dtype == torch.float32  # fp32 adapters, as PEFT
    x = torch.randn(6, 12)
    with torch.no_grad():
        y = layer(x.to(dtype))
        want = reference_forward(layer, x.to(dtype).float())
    assert y.dtype == dtype
    assert (y.double() - want).abs().max().item() <= 3e-2 * max(1.0, want.abs().max().item())
    layer.merge()
    assert layer.base.weight.dtype == dtype
    layer.unmerge()
    (layer(x.to(dtype)).float().square().mean()).backward()
    assert layer.magnitude.grad is not None and layer.magnitude.grad.dtype == torch.float32


def test_float64_base_keeps_float64_adapters():
    layer = trained_layer(dtype=torch.float64)
    assert layer.magnitude.dtype == torch.float64
    x = torch.randn(3, 12, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(layer(x), reference_forward(layer, x), rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    cpu = trained_layer(d_in=64, d_out=32, r=4, dtype=dtype)
    gpu = copy.deepcopy(cpu).to("cuda")
    assert gpu.magnitude.device.type == "cuda"
    x = torch.randn(16, 64, dtype=dtype)
    y_cpu, y_gpu = cpu(x), gpu(x.cuda())
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert (y_gpu.cpu().float() - y_cpu.float()).abs().max().item() <= tol * max(1.0, y_cpu.float().abs().max().item())
    y_cpu.float().square().mean().backward()
    y_gpu.float().square().mean().backward()
    assert torch.allclose(gpu.magnitude.grad.cpu(), cpu.magnitude.grad, rtol=1e-2, atol=1e-4)
    W0 = gpu.base.weight.detach().clone()
    gpu.merge()
    with torch.no_grad():
        assert (gpu(x.cuda()).float() - y_gpu.detach().float()).abs().max().item() <= tol * 10
    gpu.unmerge()
    assert (gpu.base.weight.float() - W0.float()).abs().max().item() <= (1e-6 if dtype == torch.float32 else 2e-2)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("module", [nn.Conv1d(4, 4, 1), nn.Embedding(5, 4), nn.LayerNorm(4)])
def test_non_linear_base_is_a_type_error(module):
    with pytest.raises(TypeError, match="base must be an nn.Linear for DoRA, got " + type(module).__name__):
        DoRALinear(module, r=2, alpha=2)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"r": 0}, ValueError, "r must be a positive int"),
    ({"r": 2.0}, TypeError, "r must be an int"),
    ({"alpha": -1}, ValueError, "alpha must be"),
    ({"dropout": 1.0}, ValueError, "dropout must be in"),
    ({"init": "svd"}, ValueError, "init must be one of"),
])
def test_bad_hyper_parameters(kwargs, error, message):
    args = {"r": 2, "alpha": 2, **kwargs}
    with pytest.raises(error, match=message):
        DoRALinear(nn.Linear(4, 4), **args)


def test_zero_weight_row_is_refused():
    base = nn.Linear(4, 3)
    with torch.no_grad():
        base.weight[1] = 0.0
    with pytest.raises(ValueError, match=r"rows \[1\] of W0 \+ s\*B@A are zero"):
        DoRALinear(base, r=2, alpha=2)
    model = nn.Sequential(base)
    with pytest.raises(ValueError, match="use_dora=True needs nonzero weight rows"):
        lorakit.apply_lora(model, LoRAConfig(r=2, target_modules=["0"], use_dora=True))
    assert type(model[0]) is nn.Linear  # unchanged


def test_dora_linear_validates_shapes():
    W, A, B = torch.randn(3, 4), torch.randn(2, 4), torch.randn(3, 2)
    with pytest.raises(ValueError, match=r"magnitude must have shape \(3,\)"):
        dora_linear(torch.randn(1, 4), W, None, A, B, torch.ones(4), 1.0)
    with pytest.raises(ValueError, match="x has 5 features"):
        dora_linear(torch.randn(1, 5), W, None, A, B, torch.ones(3), 1.0)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        dora_linear(torch.ones(1, 4, dtype=torch.long), W, None, A, B, torch.ones(3), 1.0)
    with pytest.raises(ValueError, match="dropout_p must be in"):
        dora_linear(torch.randn(1, 4), W, None, A, B, torch.ones(3), 1.0, dropout_p=1.5)


def test_config_use_dora_validation_and_round_trip():
    with pytest.raises(TypeError, match="use_dora must be a bool"):
        LoRAConfig(use_dora="yes")
    cfg = LoRAConfig(r=4, alpha=8, use_dora=True)
    raw = cfg.to_peft_dict()
    assert raw["use_dora"] is True
    assert LoRAConfig.from_peft_dict(raw) == cfg


def test_save_adapter_refuses_a_config_of_the_other_kind(tmp_path):
    model = lorakit.apply_lora(nn.Sequential(nn.Linear(4, 4)), LoRAConfig(r=2, target_modules=["0"], use_dora=True))
    with pytest.raises(ValueError, match=r"config.use_dora=False but layers \['0'\]"):
        lorakit.save_adapter(model, tmp_path, LoRAConfig(r=2, target_modules=["0"]))


def test_dora_config_without_magnitudes_is_refused(tmp_path):
    lora = lorakit.apply_lora(nn.Sequential(nn.Linear(4, 4)), LoRAConfig(r=2, target_modules=["0"]))
    lorakit.save_adapter(lora, tmp_path, LoRAConfig(r=2, target_modules=["0"]))
    cfg = tmp_path / "adapter_config.json"
    cfg.write_text(cfg.read_text().replace('"use_dora": false', '"use_dora": true'))
    fresh = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="use_dora=True but the weights hold no lora_magnitude_vector"):
        lorakit.load_adapter(fresh, tmp_path)
    assert type(fresh[0]) is nn.Linear


def test_save_load_round_trip_in_lorakit(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    base = copy.deepcopy(model)
    model = lorakit.apply_lora(model, LoRAConfig(r=2, target_modules=["0", "2"], use_dora=True))
    for layer in lorakit.lora_layers(model).values():
        with torch.no_grad():
            layer.lora_B.normal_()
            layer.magnitude.mul_(0.7)
    lorakit.save_adapter(model, tmp_path)
    back = lorakit.load_adapter(base, tmp_path)
    x = torch.randn(4, 6)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


@pytest.mark.cuda
def test_cuda_apply_lora_with_dora_trains():
    from builders import tiny_lm

    model = lorakit.apply_lora(tiny_lm().cuda(), LoRAConfig(r=4, target_modules="all-linear", use_dora=True))
    ids = torch.randint(0, 32, (2, 8), device="cuda")
    model(ids).float().square().mean().backward()
    layers = lorakit.lora_layers(model).values()
    assert layers and all(isinstance(m, DoRALinear) and m.magnitude.grad.is_cuda for m in layers)
