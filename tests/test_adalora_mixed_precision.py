"""AdaLoRA under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (issue 9, item 1), on fp32 and bf16 bases.

A forward + loss (+ orthogonal regularization) + backward under autocast gives gradients within bf16
tolerance of the fp32 reference on the same weights (relative error of each gradient tensor <= 8%; measured
about 3%), in the adapters' fp32; the optimizer step and the allocator then run as usual, and
``train_adalora`` trains inside an autocast region.
"""

from __future__ import annotations

import copy

import pytest
import torch
from adalora_builders import ALL7, config, randomize_lorakit
from builders import tiny_lm
from torch import nn

from lorakit.adalora import RankAllocator, adalora_layers, apply_adalora, orthogonal_regularization, train_adalora
from lorakit.data import caesar_task, lm_loss
from lorakit.models import load_tiny_lm

GRAD_TOL = 0.08


def pair(dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    """(fp32 reference, model on a ``dtype`` base) with the same adapter weights."""
    base = tiny_lm()
    ref = apply_adalora(copy.deepcopy(base), config(ALL7))
    randomize_lorakit(ref)
    model = apply_adalora(copy.deepcopy(base).to(dtype), config(ALL7))
    with torch.no_grad():
        for name, layer in adalora_layers(model).items():
            for k in ("lora_A", "lora_E", "lora_B"):
                getattr(layer, k).copy_(getattr(adalora_layers(ref)[name], k))
    return ref.train(), model.train()


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 32, (4, 12), generator=gen), torch.randint(0, 32, (4, 12), generator=gen)


def loss_of(model: nn.Module, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return lm_loss(model(ids), targets) + 0.3 * orthogonal_regularization(model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32-base", "bf16-base"])
def test_autocast_gradients_are_close_to_the_fp32_reference(dtype):
    ref, model = pair(dtype)
    ids, targets = batch()
    loss_of(ref, ids, targets).backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_of(model, ids, targets)
        assert model(ids).dtype == torch.bfloat16  # autocast is really on
    loss.backward()
    for name, layer in adalora_layers(model).items():
        want = adalora_layers(ref)[name]
        for k in ("lora_A", "lora_E", "lora_B"):
            g, g_ref = getattr(layer, k).grad, getattr(want, k).grad
            assert g.dtype == torch.float32 and torch.isfinite(g).all(), (name, k)
            err = ((g - g_ref).norm() / g_ref.norm()).item()
            assert err <= GRAD_TOL, (name, k, err)
    assert not any(p.grad is not None for p in model.parameters() if not p.requires_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32-base", "bf16-base"])
def test_autocast_training_steps_with_the_allocator(dtype):
    _, model = pair(dtype)
    allocator = RankAllocator.from_config(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(1, allocator.total_step + 1):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_of(model, *batch(step))
        loss.backward()
        opt.step()
        allocator.update_and_allocate(model, step)
        opt.zero_grad()
        assert torch.isfinite(loss)
    layers = adalora_layers(model).values()
    assert all(layer.lora_A.dtype == torch.float32 and layer.base.weight.dtype == dtype for layer in layers)
    assert sum(layer.rank for layer in layers) == allocator.target_budget


def test_train_adalora_inside_autocast():
    train, heldout = caesar_task(n_train=32, n_eval=16)
    model = apply_adalora(load_tiny_lm().to(torch.bfloat16), config(ALL7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hist = train_adalora(model, train, lr=5e-3, batch_size=8, eval_data=heldout, eval_every=3)
    assert all(torch.isfinite(torch.tensor(hist.loss)))
    assert hist.total_rank[-1] == 2 * 14 and set(hist.final) == {"loss", "letter_acc", "exact_match"}
