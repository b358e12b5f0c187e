"""DoRA under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (issue 9, item 1), on fp32 and bf16 bases.

Forward + loss + backward under autocast gives gradients of ``A``, ``B`` and the magnitude within bf16
tolerance of the fp32 reference on the same weights (relative error of each gradient tensor <= 8%; measured
about 2.5%), in the adapters' fp32; an AdamW step keeps everything finite and fp32, and the model merges
afterwards with the same outputs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from builders import tiny_lm
from torch import nn

import lorakit
from lorakit.data import lm_loss

ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GRAD_TOL = 0.08
FACTORS = ("lora_A", "lora_B", "magnitude")


def pair(dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    base = tiny_lm()
    cfg = lorakit.LoRAConfig(r=4, alpha=8, target_modules=ALL7, use_dora=True)
    ref = lorakit.apply_lora(copy.deepcopy(base), cfg)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in lorakit.lora_layers(ref).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.2)
            layer.magnitude.mul_(1 + 0.2 * torch.randn(layer.magnitude.shape, generator=gen))
    model = lorakit.apply_lora(copy.deepcopy(base).to(dtype), cfg)
    with torch.no_grad():
        for name, layer in lorakit.lora_layers(model).items():
            for k in FACTORS:
                getattr(layer, k).copy_(getattr(lorakit.lora_layers(ref)[name], k))
    return ref.train(), model.train()


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 32, (4, 12), generator=gen), torch.randint(0, 32, (4, 12), generator=gen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32-base", "bf16-base"])
def test_autocast_gradients_are_close_to_the_fp32_reference(dtype):
    ref, model = pair(dtype)
    ids, targets = batch()
    lm_loss(ref(ids), targets).backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids)
        assert out.dtype == torch.bfloat16  # autocast is really on
        loss = lm_loss(out, targets)
    loss.backward()
    for name, layer in lorakit.lora_layers(model).items():
        want = lorakit.lora_layers(ref)[name]
        for k in FACTORS:
            g, g_ref = getattr(layer, k).grad, getattr(want, k).grad
            assert g.dtype == torch.float32 and torch.isfinite(g).all(), (name, k)
            err = ((g - g_ref).norm() / g_ref.norm()).item()
            assert err <= GRAD_TOL, (name, k, err)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32-base", "bf16-base"])
def test_autocast_training_steps_then_merge(dtype):
    _, model = pair(dtype)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = lm_loss(model(batch(0)[0]), batch(0)[1])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses))) and losses[-1] < losses[0]
    for layer in lorakit.lora_layers(model).values():
        assert layer.magnitude.dtype == layer.lora_A.dtype == torch.float32 and layer.base.weight.dtype == dtype
    model.eval()
    ids = batch(1)[0]
    with torch.no_grad():
        want = model(ids).float()
        lorakit.merge_lora(model)
        got = model(ids).float()
    assert (got - want).abs().max().item() <= (1e-4 if dtype == torch.float32 else 5e-2) * max(1.0, want.abs().max())
