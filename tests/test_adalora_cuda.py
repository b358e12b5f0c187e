"""AdaLoRA on CUDA (issue 9, items 1, 7 and 10): marked ``cuda``, skipped where no GPU is present.

A CPU tensor built inside the training loop (an identity matrix, a mask) fails a CUDA step, so the
first test runs whole training steps on the GPU; the others check CPU == CUDA, CUDA autocast in fp16 and
bf16 against the fp32 reference, the bf16 merge, saving on one device and loading on the other, and the
sync-free compiled step.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from adalora_builders import ALL7, config, randomize_lorakit, train_lorakit
from builders import tiny_lm

import lorakit
from lorakit.adalora import (
    RankAllocator,
    adalora_layers,
    apply_adalora,
    orthogonal_regularization,
    orthogonality_errors,
    train_adalora,
)
from lorakit.data import caesar_task, lm_loss
from lorakit.models import load_tiny_lm

pytestmark = pytest.mark.cuda
FACTORS = ("lora_A", "lora_E", "lora_B")


def batch(seed: int = 0, device: str = "cuda") -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids, tgt = torch.randint(0, 32, (4, 12), generator=gen), torch.randint(0, 32, (4, 12), generator=gen)
    return ids.to(device), tgt.to(device)


def loss_of(model, ids, tgt):
    return lm_loss(model(ids), tgt) + 0.3 * orthogonal_regularization(model)


def test_cuda_training_steps_with_the_allocator():
    train, heldout = caesar_task(n_train=64, n_eval=32)
    model = apply_adalora(load_tiny_lm().cuda(), config(ALL7, total_step=8, tinit=1, tfinal=2, deltaT=2))
    hist = train_adalora(model, train, lr=5e-3, batch_size=16, eval_data=heldout, eval_every=4)
    assert all(p.is_cuda for p in model.parameters())
    assert hist.total_rank[-1] == 2 * 14 == sum(hist.budget[-1:])
    assert all(layer.rank_mask.is_cuda for layer in adalora_layers(model).values())
    assert all(math.isfinite(v) for v in hist.orth_p + hist.orth_q)  # from the on-device identity
    layer = next(iter(adalora_layers(model).values()))
    assert all(isinstance(e, float) for e in orthogonality_errors(layer))


def test_cuda_matches_cpu_forward_gradients_and_regularization():
    cpu = apply_adalora(tiny_lm(), config(ALL7))
    randomize_lorakit(cpu)
    gpu = copy.deepcopy(cpu).cuda()
    ids, tgt = batch(device="cpu")
    loss_cpu = loss_of(cpu.train(), ids, tgt)
    loss_gpu = loss_of(gpu.train(), ids.cuda(), tgt.cuda())
    torch.testing.assert_close(loss_gpu.cpu(), loss_cpu, rtol=1e-4, atol=1e-5)
    loss_cpu.backward()
    loss_gpu.backward()
    for name, layer in adalora_layers(cpu).items():
        for k in FACTORS:
            torch.testing.assert_close(getattr(adalora_layers(gpu)[name], k).grad.cpu(), getattr(layer, k).grad,
                                       rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("amp", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("base_dtype", [torch.float32, torch.bfloat16], ids=["fp32-base", "bf16-base"])
def test_cuda_autocast_step_is_close_to_fp32(amp, base_dtype):
    base = tiny_lm().cuda()
    ref = apply_adalora(copy.deepcopy(base), config(ALL7))
    randomize_lorakit(ref)
    model = apply_adalora(copy.deepcopy(base).to(base_dtype), config(ALL7))
    with torch.no_grad():
        for name, layer in adalora_layers(model).items():
            for k in FACTORS:
                getattr(layer, k).copy_(getattr(adalora_layers(ref)[name], k))
    ids, tgt = batch()
    loss_of(ref.train(), ids, tgt).backward()
    with torch.autocast("cuda", dtype=amp):
        loss = loss_of(model.train(), ids, tgt)
    loss.backward()
    for name, layer in adalora_layers(model).items():
        for k in FACTORS:
            g, g_ref = getattr(layer, k).grad, getattr(adalora_layers(ref)[name], k).grad
            assert g.dtype == torch.float32 and torch.isfinite(g).all()
            assert ((g - g_ref).norm() / g_ref.norm()).item() <= 0.08, (name, k)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    opt.step()
    RankAllocator.from_config(model).update_and_allocate(model, 1)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_cuda_bf16_merge_rounds_once():
    model = apply_adalora(tiny_lm().cuda().to(torch.bfloat16), config(ALL7))
    randomize_lorakit(model)
    layers = adalora_layers(model)
    want = {n: (m.base.weight.float() + m.delta_weight_unrounded()).to(torch.bfloat16) for n, m in layers.items()}
    ids, _ = batch()
    with torch.no_grad():
        before = model(ids).float()
        lorakit.merge_lora(model)
        after = model(ids).float()
    assert all(torch.equal(layer.base.weight, want[n]) for n, layer in layers.items())
    assert (after - before).abs().max().item() <= 5e-2 * max(1.0, before.abs().max().item())


def test_save_on_cuda_load_on_cpu_and_back(tmp_path):
    gpu = train_lorakit("tinylm", seed=4, base=tiny_lm().cuda())
    lorakit.save_adapter(gpu, tmp_path)
    cpu = lorakit.load_adapter(tiny_lm(), tmp_path)
    ids, _ = batch(device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(cpu(ids), gpu(ids.cuda()).cpu(), rtol=1e-4, atol=1e-5)
        other = apply_adalora(tiny_lm().cuda(), config(["q_proj", "v_proj"]))
        lorakit.load_adapter(other, tmp_path)  # hot swap into a CUDA model: masks and weights on the GPU
        assert all(layer.rank_mask.is_cuda for layer in adalora_layers(other).values())
        torch.testing.assert_close(other(ids.cuda()), gpu(ids.cuda()), rtol=1e-5, atol=1e-6)


@torch._dynamo.config.patch(trace_autograd_ops=True)
def test_cuda_training_step_compiles_fullgraph():
    torch._dynamo.reset()
    model = apply_adalora(tiny_lm().cuda(), config(["q_proj", "v_proj"])).train()
    randomize_lorakit(model)

    def step(ids, tgt):
        loss = loss_of(model, ids, tgt)
        loss.backward()
        return loss.detach()

    loss = torch.compile(step, backend="eager", fullgraph=True)(*batch())
    assert loss.is_cuda and torch.isfinite(loss)
