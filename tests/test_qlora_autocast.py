"""QLoRA under ``torch.autocast`` (issue 9, item 1): every compute dtype x every autocast dtype trains, both backends.

The reference is the same layer written with plain autograd ops under the same autocast: ``F.linear`` on the
dequantized weight plus the LoRA bypass. The lorakit backend runs its base matmul in the autocast dtype, as
autocast runs ``nn.Linear``, so its forward equals the reference bit for bit; gradients agree within bf16
tolerance (the backward products round in the autocast dtype in a different order). CPU autocast (bf16 and
fp16) runs in CI; the CUDA variants are marked ``cuda``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from builders import tiny_lm
from torch import nn

from lorakit.data import lm_loss
from lorakit.peft import LoRAConfig, lora_layers
from lorakit.qlora import NF4Linear, QLoRALinear, apply_qlora, merge_qlora

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]

COMPUTE = [torch.float32, torch.bfloat16, torch.float16]
AUTOCAST = [torch.bfloat16, torch.float16]
BACKENDS = ["lorakit", "bitsandbytes"]


def make_layer(backend: str, compute_dtype: torch.dtype, device: str = "cpu", bias: bool = True) -> QLoRALinear:
    torch.manual_seed(0)
    linear = nn.Linear(128, 64, bias=bias).to(device)
    layer = QLoRALinear(linear, r=4, alpha=8, compute_dtype=compute_dtype, backend=backend)
    with torch.no_grad():
        layer.lora_B.normal_(0.0, 0.1, generator=torch.Generator(device=device).manual_seed(1))
    return layer


def reference(layer: QLoRALinear, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Eq. 1 with plain ops (autocast decides their dtypes), on the layer's dequantized weight."""
    w = layer.dequantized_weight(torch.float32).detach()
    bias = None if layer.base.bias is None else layer.base.bias.detach().float()
    return F.linear(x, w, bias).float() + (F.linear(F.linear(x, A), B) * layer.scaling).float()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


def run_and_compare(layer: QLoRALinear, device: str, autocast_dtype: torch.dtype, backward_inside: bool) -> None:
    x = torch.randn(2, 5, 128, device=device, generator=torch.Generator(device=device).manual_seed(2))
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    A = layer.lora_A.detach().clone().requires_grad_(True)
    B = layer.lora_B.detach().clone().requires_grad_(True)
    with torch.autocast(device, dtype=autocast_dtype):
        y = layer(x1)
        ref = reference(layer, x2, A, B)
        if backward_inside:  # a common pattern: loss.backward() inside the autocast block
            y.float().square().sum().backward()
    if not backward_inside:  # the recommended pattern
        y.float().square().sum().backward()
    ref.square().sum().backward()
    assert y.dtype == torch.float32, "as PEFT's 4-bit layer: the output is in the input's dtype"
    assert x1.grad.dtype == torch.float32 and layer.lora_A.grad.dtype == layer.lora_B.grad.dtype == torch.float32
    tol = 1.5e-2  # bf16 has 8 mantissa bits: 2^-8 = 3.9e-3 per rounding, a few roundings deep
    assert rel(y, ref) < tol
    assert rel(x1.grad, x2.grad) < tol
    assert rel(layer.lora_A.grad, A.grad) < tol and rel(layer.lora_B.grad, B.grad) < tol
    if layer.backend == "lorakit":  # the base matmul runs in the autocast dtype, exactly as the reference's
        torch.testing.assert_close(y, ref, rtol=0, atol=0)
    assert all(p.grad is None for p in layer.base.parameters())


@pytest.mark.parametrize("backward_inside", [False, True])
@pytest.mark.parametrize("autocast_dtype", AUTOCAST)
@pytest.mark.parametrize("compute_dtype", COMPUTE)
@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_trains_under_cpu_autocast(backend, compute_dtype, autocast_dtype, backward_inside):
    run_and_compare(make_layer(backend, compute_dtype), "cpu", autocast_dtype, backward_inside)


@pytest.mark.parametrize("compute_dtype", COMPUTE)
def test_nf4linear_alone_under_autocast_matches_a_linear_under_autocast(compute_dtype):
    """The base on its own: autocast decides the matmul dtype, as it does for nn.Linear; grads in input dtypes."""
    layer = make_layer("lorakit", compute_dtype).base
    assert isinstance(layer, NF4Linear)
    dense = nn.Linear(128, 64)
    with torch.no_grad():
        dense.weight.copy_(layer.dequantized_weight(torch.float32))
        dense.bias.copy_(layer.bias)
    x1 = torch.randn(7, 128, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y1, y2 = layer(x1), dense(x2)
    torch.testing.assert_close(y1, y2.float(), rtol=0, atol=0)
    g = torch.randn(7, 64)
    y1.backward(g)
    y2.float().backward(g)
    assert x1.grad.dtype == torch.float32
    assert rel(x1.grad, x2.grad) < 1e-2


def test_without_autocast_the_compute_dtype_is_used():
    layer = make_layer("lorakit", torch.float16)
    x = torch.randn(3, 128)
    w = layer.dequantized_weight(torch.float16)
    expected = F.linear(x.half(), w, layer.base.bias.half()).float()
    torch.testing.assert_close(layer.base(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16])
def test_model_trains_a_few_steps_under_cpu_autocast(backend, compute_dtype):
    """apply_qlora, then AdamW steps under autocast(bf16): finite loss that goes down, grads only on LoRA."""
    torch.manual_seed(0)
    model = apply_qlora(tiny_lm(), LoRAConfig(r=4, alpha=8, target_modules="all-linear"), blocksize=32,
                        compute_dtype=compute_dtype, backend=backend)
    ids = torch.randint(0, 32, (8, 12), generator=torch.Generator().manual_seed(3))
    targets = torch.roll(ids, -1, dims=1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    model.train()
    for _ in range(6):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = lm_loss(model(ids), targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    grads = {n for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(n.endswith(("lora_A", "lora_B")) for n in grads)


@pytest.mark.parametrize("requantize", [False, True])
def test_merged_model_runs_under_autocast(requantize):
    model = apply_qlora(tiny_lm(), LoRAConfig(r=4, alpha=8, target_modules="all-linear"), blocksize=32)
    for layer in lora_layers(model).values():
        torch.nn.init.normal_(layer.lora_B, std=0.05)
    ids = torch.randint(0, 32, (2, 8))
    with torch.no_grad():
        before = model(ids)
    merged = merge_qlora(copy.deepcopy(model), requantize=requantize)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = merged(ids)
    assert torch.isfinite(out).all()
    assert rel(out, before) < (0.3 if requantize else 5e-2)


# --------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("autocast_dtype", AUTOCAST)
@pytest.mark.parametrize("compute_dtype", COMPUTE)
@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_layer_trains_under_autocast(backend, compute_dtype, autocast_dtype):
    run_and_compare(make_layer(backend, compute_dtype, device="cuda"), "cuda", autocast_dtype, False)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_model_trains_under_autocast(backend):
    torch.manual_seed(0)
    model = apply_qlora(tiny_lm().cuda(), LoRAConfig(r=4, alpha=8, target_modules="all-linear"), blocksize=32,
                        backend=backend)
    ids = torch.randint(0, 32, (8, 12), device="cuda")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cuda", dtype=dtype):
            loss = lm_loss(model(ids), torch.roll(ids, -1, dims=1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        assert torch.isfinite(loss)
