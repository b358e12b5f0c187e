"""A DoRA and an AdaLoRA training step compile without graph breaks or host syncs (issue 9, item 10).

``torch.compile(step, backend="eager", fullgraph=True)`` raises on any graph break and on any
data-dependent host sync (``.item()``, ``.tolist()``, ``bool(tensor)``) in the traced code; with
``trace_autograd_ops`` the backward is traced too. ``step`` is forward + loss (+ AdaLoRA's orthogonal
regularization) + backward on a one-block course TinyLM; the compiled step gives the same loss and gradients as
the eager one. The "eager" backend needs no compiler, so this runs in CI on CPU.
"""

from __future__ import annotations

import copy

import pytest
import torch
from adalora_builders import config, randomize_lorakit
from torch import nn

import lorakit
from lorakit.adalora import SVDLinear, apply_adalora, orthogonal_regularization
from lorakit.data import lm_loss
from lorakit.dora import DoRALinear
from lorakit.models import TinyLM, TinyLMConfig

trace_backward = torch._dynamo.config.patch(trace_autograd_ops=True)
#: attention and MLP layers of both shapes (square and rectangular)
TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]


def tiny_lm() -> TinyLM:
    """One block of the course architecture: tracing cost grows with the number of layers, not the checks."""
    torch.manual_seed(0)
    return TinyLM(TinyLMConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=16)).eval()


def dora_model(dropout: float = 0.0) -> nn.Module:
    cfg = lorakit.LoRAConfig(r=4, alpha=8, target_modules=TARGETS, use_dora=True, dropout=dropout)
    model = lorakit.apply_lora(tiny_lm(), cfg)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in lorakit.lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.2)
            layer.magnitude.mul_(1 + 0.2 * torch.randn(layer.magnitude.shape, generator=gen))
    return model.train()


def adalora_model(dropout: float = 0.0) -> nn.Module:
    model = apply_adalora(tiny_lm(), config(TARGETS, dropout=dropout))
    randomize_lorakit(model)
    return model.train()


def make_step(model: nn.Module, orth_weight: float | None, autocast: bool = False):
    def step(ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = lm_loss(model(ids), targets)
            if orth_weight is not None:
                loss = loss + orth_weight * orthogonal_regularization(model)
        loss.backward()
        return loss.detach()

    return step


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 32, (2, 6), generator=gen), torch.randint(0, 32, (2, 6), generator=gen)


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "autocast-bf16"])
@pytest.mark.parametrize("kind", ["dora", "adalora"])
@trace_backward
def test_training_step_compiles_fullgraph_and_matches_eager(kind, autocast):
    torch._dynamo.reset()
    eager = dora_model() if kind == "dora" else adalora_model()
    compiled_model = copy.deepcopy(eager)
    orth = None if kind == "dora" else 0.3
    compiled = torch.compile(make_step(compiled_model, orth, autocast), backend="eager", fullgraph=True)
    ids, targets = batch()
    want = make_step(eager, orth, autocast)(ids, targets)
    got = compiled(ids, targets)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    want_g, got_g = grads(eager), grads(compiled_model)
    assert want_g.keys() == got_g.keys() and want_g
    for name, g in want_g.items():
        torch.testing.assert_close(got_g[name], g, rtol=1e-5, atol=1e-7, msg=name)
    kinds = {type(m) for m in compiled_model.modules()}
    assert (DoRALinear if kind == "dora" else SVDLinear) in kinds


@pytest.mark.parametrize("kind", ["dora", "adalora"])
@trace_backward
def test_training_step_with_dropout_compiles_fullgraph(kind):
    torch._dynamo.reset()
    model = dora_model(dropout=0.1) if kind == "dora" else adalora_model(dropout=0.1)
    compiled = torch.compile(make_step(model, None if kind == "dora" else 0.3), backend="eager", fullgraph=True)
    loss = compiled(*batch())
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads(model).values())


def test_orthogonal_regularization_compiles_alone():
    torch._dynamo.reset()
    model = adalora_model()
    fn = torch.compile(orthogonal_regularization, backend="eager", fullgraph=True)
    torch.testing.assert_close(fn(model), orthogonal_regularization(model), rtol=0, atol=0)


@trace_backward
def test_the_check_catches_a_host_sync():
    """The test above would fail on a sync: a forward that calls ``.item()`` does not compile fullgraph."""
    torch._dynamo.reset()

    class Syncing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.w if bool((self.w > 0).all()) else x

    model = Syncing()

    def step(x: torch.Tensor) -> torch.Tensor:
        loss = model(x).sum()
        loss.backward()
        return loss.detach()

    with pytest.raises(Exception, match="data-dependent|Data-dependent|graph break|guard"):
        torch.compile(step, backend="eager", fullgraph=True)(torch.randn(3))
