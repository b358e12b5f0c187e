"""Tests of ``lorakit.lora.LoRALinear`` (notebooks 01-04): init, scaling, freezing, merge, dtypes."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from lorakit.functional import lora_linear_reference
from lorakit.lora import INITS, LoRALinear, MergeWarning, RankWarning, lora_scaling, validate_lora_args


def make_layer(in_f: int = 32, out_f: int = 24, bias: bool = True, seed: int = 0, **kw) -> LoRALinear:
    torch.manual_seed(seed)
    return LoRALinear(nn.Linear(in_f, out_f, bias=bias), **kw)


def randomise_B(layer: LoRALinear, seed: int = 1) -> None:
    """B starts at zero; give it values so the bypass (and merging) actually does something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)


# --------------------------------------------------------------------------- shapes and init
def test_shapes_and_dtype():
    layer = make_layer(32, 24, r=4)
    assert layer.lora_A.shape == (4, 32)
    assert layer.lora_B.shape == (24, 4)
    assert layer.in_features == 32 and layer.out_features == 24
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
    assert "r=4" in repr(layer)


def test_kaiming_init_bounds_and_zero_B():
    in_f = 256
    layer = make_layer(in_f, 64, r=16)
    bound = 1 / math.sqrt(in_f)  # kaiming_uniform with a=sqrt(5): gain*sqrt(3/fan_in) = 1/sqrt(fan_in)
    assert layer.lora_A.abs().max().item() <= bound
    assert layer.lora_A.abs().max().item() > 0.9 * bound  # uniform over the whole interval
    assert torch.all(layer.lora_B == 0)


def test_gaussian_init_std_is_one_over_r():
    r = 4
    layer = make_layer(4096, 8, r=r, init="gaussian")
    std = layer.lora_A.std().item()
    assert abs(std - 1 / r) < 0.03 / r  # 16k samples: relative error of the std ~ 0.6%
    assert abs(layer.lora_A.mean().item()) < 0.01
    assert torch.all(layer.lora_B == 0)


def test_zeros_init():
    layer = make_layer(init="zeros")
    assert torch.all(layer.lora_A == 0) and torch.all(layer.lora_B == 0)


@pytest.mark.parametrize("init", ["kaiming", "gaussian", "zeros"])
def test_non_pissa_init_forward_equals_base(init):
    layer = make_layer(init=init, r=4)
    x = torch.randn(3, 32)
    torch.testing.assert_close(layer(x), layer.base(x), rtol=0, atol=0)


@pytest.mark.parametrize("rslora", [False, True])
def test_pissa_init(rslora):
    torch.manual_seed(0)
    base = nn.Linear(32, 24)
    original = base.weight.detach().clone()
    x = torch.randn(5, 32)
    expected = base(x).detach()
    r = 5
    layer = LoRALinear(base, r=r, alpha=3.0, rslora=rslora, init="pissa")
    U, S, Vh = torch.linalg.svd(original, full_matrices=False)
    top_r = U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]
    torch.testing.assert_close(layer.delta_weight(), top_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.base.weight, original - top_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    # The adapters share the singular values evenly: A A^T and B^T B are both diag(S_r) / scaling.
    torch.testing.assert_close(layer.lora_A @ layer.lora_A.t(), torch.diag(S[:r]) / layer.scaling, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer.lora_B.t() @ layer.lora_B, torch.diag(S[:r]) / layer.scaling, rtol=1e-4, atol=1e-4)


def test_pissa_rank_above_min_raises():
    with pytest.raises(ValueError, match="PiSSA"):
        make_layer(8, 6, r=7, init="pissa")


def test_reset_lora_parameters():
    layer = make_layer(r=4)
    randomise_B(layer)
    layer.reset_lora_parameters("zeros")
    assert layer.init == "zeros" and torch.all(layer.lora_A == 0)
    with pytest.raises(ValueError, match="init"):
        layer.reset_lora_parameters("xavier")
    layer.merge()
    with pytest.raises(RuntimeError, match="unmerge"):
        layer.reset_lora_parameters("kaiming")


# --------------------------------------------------------------------------- scaling
@pytest.mark.parametrize("r, alpha", [(1, 1), (4, 8), (8, 16), (16, 8.0), (64, 128)])
def test_scaling(r, alpha):
    assert make_layer(64, 64, r=r, alpha=alpha).scaling == pytest.approx(alpha / r)
    assert make_layer(64, 64, r=r, alpha=alpha, rslora=True).scaling == pytest.approx(alpha / math.sqrt(r))
    assert lora_scaling(r, alpha, rslora=True) / lora_scaling(r, alpha) == pytest.approx(math.sqrt(r))


def test_scaling_enters_the_forward():
    layer = make_layer(r=4, alpha=12)
    randomise_B(layer)
    x = torch.randn(3, 32)
    expected = layer.base(x) + 3.0 * (x @ layer.lora_A.t()) @ layer.lora_B.t()
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize(
    "r, alpha, exc, match",
    [(0, 8, ValueError, "r must"), (-4, 8, ValueError, "r must"), (2.0, 8, TypeError, "r must"),
     (8, 0, ValueError, "alpha"), (8, float("nan"), ValueError, "alpha")],
)
@pytest.mark.parametrize("rslora", [False, True])
def test_lora_scaling_rejects_bad_arguments(r, alpha, exc, match, rslora):
    with pytest.raises(exc, match=match):
        lora_scaling(r, alpha, rslora=rslora)


# --------------------------------------------------------------------------- freezing and training
def test_base_frozen_adapters_trainable():
    layer = make_layer()
    assert not layer.base.weight.requires_grad and not layer.base.bias.requires_grad
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A", "lora_B"}


def test_training_step_leaves_base_untouched():
    layer = make_layer(r=4, dropout=0.1)
    bias, weight = layer.base.bias, layer.base.weight
    bias_before, weight_before = bias.detach().clone(), weight.detach().clone()
    A_before = layer.lora_A.detach().clone()
    opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=1e-2)
    layer.train()
    for _ in range(2):  # B is zero at step 1, so A only moves from step 2 on
        loss = layer(torch.randn(8, 32)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert layer.base.bias is bias and layer.base.weight is weight
    assert torch.equal(bias, bias_before) and torch.equal(weight, weight_before)
    assert bias.grad is None and weight.grad is None
    assert not torch.equal(layer.lora_A, A_before)
    assert layer.lora_B.abs().sum() > 0


def test_dropout_only_on_bypass_and_only_in_training():
    layer = make_layer(r=4, dropout=0.5)
    x = torch.randn(16, 32)
    layer.train()
    torch.testing.assert_close(layer(x), layer.base(x), rtol=0, atol=0)  # B = 0: dropout cannot show
    randomise_B(layer)
    layer.eval()
    ref = lora_linear_reference(x, layer.base.weight, layer.base.bias, layer.lora_A, layer.lora_B, layer.scaling)
    torch.testing.assert_close(layer(x), ref)
    assert torch.equal(layer(x), layer(x))
    layer.train()
    torch.manual_seed(0)
    a = layer(x)
    assert not torch.allclose(a, ref)


# --------------------------------------------------------------------------- merge / unmerge
@pytest.mark.parametrize("bias", [True, False])
def test_merge_unmerge_roundtrip(bias):
    layer = make_layer(r=4, alpha=8, bias=bias)
    randomise_B(layer)
    w0 = layer.base.weight.detach().clone()
    x = torch.randn(2, 3, 32)
    unmerged = layer(x).detach()
    layer.merge()
    assert layer.merged
    merged = layer(x).detach()
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.base(x), merged, rtol=0, atol=0)  # merged = one plain nn.Linear
    torch.testing.assert_close(layer.base.weight, w0 + layer.delta_weight(), rtol=0, atol=0)
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base.weight, w0, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-6)


def test_merge_twice_warns_and_changes_nothing():
    layer = make_layer(r=4)
    randomise_B(layer)
    layer.merge()
    w = layer.base.weight.detach().clone()
    with pytest.warns(MergeWarning, match="already merged"):
        layer.merge()
    assert torch.equal(layer.base.weight, w) and layer.merged


def test_unmerge_unmerged_warns_and_changes_nothing():
    layer = make_layer(r=4)
    randomise_B(layer)
    w = layer.base.weight.detach().clone()
    with pytest.warns(MergeWarning, match="not merged"):
        layer.unmerge()
    assert torch.equal(layer.base.weight, w) and not layer.merged


def test_delta_weight():
    layer = make_layer(r=4, alpha=6)
    randomise_B(layer)
    torch.testing.assert_close(layer.delta_weight(), 1.5 * layer.lora_B @ layer.lora_A)
    assert layer.delta_weight().shape == (24, 32)


# --------------------------------------------------------------------------- rank warning, bad arguments
def test_rank_above_min_warns_but_works():
    with pytest.warns(RankWarning, match="exceeds"):
        layer = make_layer(8, 6, r=7)
    assert layer.lora_A.shape == (7, 8)
    x = torch.randn(2, 8)
    assert layer(x).shape == (2, 6)


def test_rank_equal_min_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_layer(8, 6, r=6)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"r": 0}, ValueError, "r must"),
        ({"r": -1}, ValueError, "r must"),
        ({"r": 2.0}, TypeError, "r must"),
        ({"r": True}, TypeError, "r must"),
        ({"r": "8"}, TypeError, "r must"),
        ({"alpha": 0}, ValueError, "alpha"),
        ({"alpha": -1}, ValueError, "alpha"),
        ({"alpha": float("nan")}, ValueError, "alpha"),
        ({"alpha": float("inf")}, ValueError, "alpha"),
        ({"alpha": "16"}, TypeError, "alpha"),
        ({"alpha": True}, TypeError, "alpha"),
        ({"dropout": -0.1}, ValueError, "dropout"),
        ({"dropout": 1.0}, ValueError, "dropout"),
        ({"dropout": None}, TypeError, "dropout"),
        ({"init": "foo"}, ValueError, "init"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        make_layer(**kwargs)


def test_validate_lora_args_accepts_good_values():
    for init in INITS:
        validate_lora_args(8, 16.0, 0.05, init)


@pytest.mark.parametrize("base", [nn.Conv1d(4, 4, 1), nn.Embedding(4, 4), "linear", None])
def test_base_must_be_linear(base):
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(base)


# --------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes_on_cpu(dtype):
    torch.manual_seed(0)
    base32 = nn.Linear(32, 24)
    layer = LoRALinear(nn.Linear(32, 24).to(dtype), r=4)
    with torch.no_grad():
        layer.base.weight.copy_(base32.weight)
        layer.base.bias.copy_(base32.bias)
    randomise_B(layer)
    expected_adapter = torch.float32
    assert layer.lora_A.dtype == layer.lora_B.dtype == expected_adapter
    x = torch.randn(4, 32)
    out = layer(x.to(dtype))
    assert out.dtype == dtype
    ref = base32(x) + layer.scaling * (x @ layer.lora_A.t()) @ layer.lora_B.t()
    tol = 1e-5 if dtype == torch.float32 else 0.03 * ref.abs().max().item()
    torch.testing.assert_close(out.float(), ref.detach(), rtol=0 if dtype != torch.float32 else 1e-5, atol=tol)
    out.float().sum().backward()
    assert layer.lora_A.grad.dtype == torch.float32


def test_explicit_adapter_dtype():
    layer = LoRALinear(nn.Linear(8, 8).to(torch.bfloat16), r=2, adapter_dtype=torch.bfloat16)
    assert layer.lora_A.dtype == torch.bfloat16
    assert layer(torch.randn(3, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.cuda
class TestCudaLoRALinear:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
    def test_cuda_dtypes_match_cpu(self, dtype):
        cpu = make_layer(r=4)
        randomise_B(cpu)
        gpu = make_layer(r=4)
        gpu.load_state_dict(cpu.state_dict())
        gpu.base.to("cuda", dtype)
        gpu.lora_A.data = gpu.lora_A.data.cuda()
        gpu.lora_B.data = gpu.lora_B.data.cuda()
        x = torch.randn(6, 32)
        ref = cpu(x)
        out = gpu(x.to("cuda", dtype))
        assert out.dtype == dtype and out.device.type == "cuda"
        tol = 1e-4 if dtype == torch.float32 else 0.03
        torch.testing.assert_close(out.float().cpu(), ref.detach(), rtol=0, atol=tol * ref.abs().max().item())
        out.float().sum().backward()
        ref.sum().backward()
        torch.testing.assert_close(gpu.lora_B.grad.cpu(), cpu.lora_B.grad, rtol=0,
                                   atol=tol * cpu.lora_B.grad.abs().max().item())

    def test_cuda_half_base_gets_fp32_adapters(self):
        layer = LoRALinear(nn.Linear(16, 16).to("cuda", torch.bfloat16), r=4)
        assert layer.lora_A.device.type == "cuda" and layer.lora_A.dtype == torch.float32
        layer.merge()
        layer.unmerge()
