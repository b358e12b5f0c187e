"""DoRA on CUDA (issue 9, items 1, 8 and 9): marked ``cuda``, skipped where no GPU is present.

CUDA autocast in fp16 and bf16 against the fp32 reference on fp32 and bf16 bases, CPU == CUDA for a whole
model, the bf16 merge rounded once, and a refused merge that leaves the CUDA model unchanged.
"""

from __future__ import annotations

import copy

import pytest
import torch
from builders import tiny_lm
from snapshot import assert_unchanged, snapshot

import lorakit
from lorakit.data import lm_loss

pytestmark = pytest.mark.cuda
ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FACTORS = ("lora_A", "lora_B", "magnitude")


def dora(model):
    model = lorakit.apply_lora(model, lorakit.LoRAConfig(r=4, alpha=8, target_modules=ALL7, use_dora=True))
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in lorakit.lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.2)
            layer.magnitude.mul_(1 + 0.2 * torch.randn(layer.magnitude.shape, generator=gen).to(layer.magnitude))
    return model


def batch(device: str = "cuda"):
    gen = torch.Generator().manual_seed(0)
    ids, tgt = torch.randint(0, 32, (4, 12), generator=gen), torch.randint(0, 32, (4, 12), generator=gen)
    return ids.to(device), tgt.to(device)


def test_cuda_matches_cpu_for_a_dora_model():
    cpu = dora(tiny_lm()).train()
    gpu = copy.deepcopy(cpu).cuda()
    ids, tgt = batch("cpu")
    loss_cpu, loss_gpu = lm_loss(cpu(ids), tgt), lm_loss(gpu(ids.cuda()), tgt.cuda())
    torch.testing.assert_close(loss_gpu.cpu(), loss_cpu, rtol=1e-4, atol=1e-5)
    loss_cpu.backward()
    loss_gpu.backward()
    for name, layer in lorakit.lora_layers(cpu).items():
        for k in FACTORS:
            torch.testing.assert_close(getattr(lorakit.lora_layers(gpu)[name], k).grad.cpu(), getattr(layer, k).grad,
                                       rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("amp", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("base_dtype", [torch.float32, torch.bfloat16], ids=["fp32-base", "bf16-base"])
def test_cuda_autocast_step_is_close_to_fp32(amp, base_dtype):
    base = tiny_lm().cuda()
    ref = dora(copy.deepcopy(base)).train()
    model = lorakit.apply_lora(copy.deepcopy(base).to(base_dtype),
                               lorakit.LoRAConfig(r=4, alpha=8, target_modules=ALL7, use_dora=True)).train()
    with torch.no_grad():
        for name, layer in lorakit.lora_layers(model).items():
            for k in FACTORS:
                getattr(layer, k).copy_(getattr(lorakit.lora_layers(ref)[name], k))
    ids, tgt = batch()
    lm_loss(ref(ids), tgt).backward()
    with torch.autocast("cuda", dtype=amp):
        loss = lm_loss(model(ids), tgt)
    loss.backward()
    for name, layer in lorakit.lora_layers(model).items():
        for k in FACTORS:
            g, g_ref = getattr(layer, k).grad, getattr(lorakit.lora_layers(ref)[name], k).grad
            assert g.dtype == torch.float32 and torch.isfinite(g).all()
            assert ((g - g_ref).norm() / g_ref.norm()).item() <= 0.08, (name, k)
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_cuda_bf16_merge_rounds_once_and_refuses_a_bad_last_layer():
    model = dora(tiny_lm().cuda().to(torch.bfloat16))
    layers = lorakit.lora_layers(model)
    want = {n: m.effective_weight().detach().to(torch.bfloat16) for n, m in layers.items()}
    with torch.no_grad():
        list(layers.values())[-1].magnitude[0] = 0.0
    before = snapshot(model)
    with pytest.raises(ValueError, match="could not be undone"):
        lorakit.merge_lora(model)
    assert_unchanged(model, before)
    with torch.no_grad():
        list(layers.values())[-1].magnitude[0] = 1.0
        want[list(layers)[-1]] = list(layers.values())[-1].effective_weight().to(torch.bfloat16)
    lorakit.merge_lora(model)
    assert all(torch.equal(layer.base.weight, want[n]) for n, layer in layers.items())
