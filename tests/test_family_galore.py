"""GaLore (notebook 13, section 7): lorakit.family.GaLoreAdamW against the reference package galore-torch 1.0,
step for step, and its optimizer-state bytes against Adam's."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from builders import tiny_lm

import lorakit  # noqa: F401  (quiets bitsandbytes' kernels line before galore_torch imports it)
from lorakit.family import GaLoreAdamW, adam_state_numbers, galore_param_groups, galore_state_numbers
from lorakit.memory import optimizer_state_bytes

galore_torch = pytest.importorskip("galore_torch")

IDS = torch.randint(0, 32, (4, 9), generator=torch.Generator().manual_seed(0))


def loss_of(model) -> torch.Tensor:
    logits = model(IDS)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, 32), IDS.reshape(-1))


def groups_for(model, rank, gap, scale):
    return galore_param_groups(model, rank, update_proj_gap=gap, scale=scale)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("rank,gap", [(4, 3), (8, 1)])
def test_galore_adamw_equals_galore_torch_step_for_step(rank, gap, weight_decay):
    ours_model, theirs_model = tiny_lm(), tiny_lm()
    ours = GaLoreAdamW(groups_for(ours_model, rank, gap, 0.25), lr=1e-2, weight_decay=weight_decay)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        theirs = galore_torch.GaLoreAdamW(groups_for(theirs_model, rank, gap, 0.25), lr=1e-2,
                                          weight_decay=weight_decay)
    assert any("rank" in g for g in ours.param_groups)
    for _ in range(7):  # several projection refreshes (every `gap` steps)
        for model, opt in ((ours_model, ours), (theirs_model, theirs)):
            opt.zero_grad()
            loss_of(model).backward()
            opt.step()
        for (n, a), (_, b) in zip(ours_model.named_parameters(), theirs_model.named_parameters(), strict=True):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), n


def test_plain_groups_are_adamw_with_galore_torch_formulas():
    a, b = tiny_lm(), tiny_lm()
    ours = GaLoreAdamW(a.parameters(), lr=3e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        theirs = galore_torch.GaLoreAdamW(b.parameters(), lr=3e-3)
    for _ in range(3):
        for model, opt in ((a, ours), (b, theirs)):
            opt.zero_grad()
            loss_of(model).backward()
            opt.step()
    assert all(torch.allclose(p, q, atol=1e-7) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_state_bytes_against_adam():
    model = tiny_lm()  # d = 32: q/k/v/o [32, 32], gate/up [64, 32], down [32, 64]
    galore = GaLoreAdamW(galore_param_groups(copy.deepcopy(model), rank=8), lr=1e-3)
    adam = torch.optim.AdamW(copy.deepcopy(model).parameters(), lr=1e-3)
    for opt in (galore, adam):
        params = [p for g in opt.param_groups for p in g["params"]]
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    projected = [p for g in galore.param_groups if "rank" in g for p in g["params"]]
    rest = [p for g in galore.param_groups if "rank" not in g for p in g["params"]]
    want = 4 * (sum(galore_state_numbers(tuple(p.shape), 8) for p in projected)
                + sum(adam_state_numbers(tuple(p.shape)) for p in rest))
    assert optimizer_state_bytes(galore) == want
    adam_bytes = optimizer_state_bytes(adam) - 4 * len(list(model.parameters()))  # torch keeps a 4-byte step tensor
    assert adam_bytes == 4 * sum(adam_state_numbers(tuple(p.shape)) for p in model.parameters())
    assert optimizer_state_bytes(galore) < adam_bytes
    assert galore_state_numbers((4096, 11008), 128) == 2 * 128 * 11008 + 128 * 4096


def test_the_projection_is_stored_alone_while_galore_torch_keeps_the_whole_svd_factor():
    w = torch.nn.Parameter(torch.randn(64, 32))
    ours = GaLoreAdamW([{"params": [w], "rank": 4}], lr=1e-3)
    w.grad = torch.randn_like(w)
    ours.step()
    assert ours.state[w]["projection"].untyped_storage().nbytes() == 4 * 32 * 4  # r x n fp32
    v = torch.nn.Parameter(w.detach().clone())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        theirs = galore_torch.GaLoreAdamW([{"params": [v], "rank": 4, "update_proj_gap": 200, "scale": 0.25,
                                            "proj_type": "std"}], lr=1e-3)
    v.grad = w.grad.clone()
    theirs.step()
    kept = theirs.state[v]["projector"].ortho_matrix.untyped_storage().nbytes()
    assert kept == 32 * 32 * 4  # the full V^T of the SVD stays alive behind the slice (a deviation lorakit avoids)
    assert torch.allclose(theirs.state[v]["projector"].ortho_matrix, ours.state[w]["projection"])


def test_the_update_of_one_step_has_rank_at_most_r():
    model = tiny_lm()
    w = model.layers[0].mlp.gate_proj.weight  # [64, 32]
    opt = GaLoreAdamW([{"params": [w], "rank": 3, "scale": 1.0}], lr=1e-2)
    before = w.detach().clone()
    w.grad = torch.randn_like(w)
    opt.step()
    assert torch.linalg.matrix_rank(w.detach() - before).item() == 3
