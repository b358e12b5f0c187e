"""Unit tests for lorakit.adalora (notebook 10): SVDLinear, RankAllocator, orthogonal regularization,
the model-level API, the rank report helpers, train_adalora, and bad input.

The PEFT cross-checks are in tests/test_adalora_crosscheck.py.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from builders import tiny_lm
from torch import nn

from lorakit import LoRAConfig, MergeWarning, apply_lora
from lorakit.adalora import (
    RANKNUM_EPS,
    AdaLoRAConfig,
    RankAllocator,
    SVDLinear,
    adalora_layers,
    apply_adalora,
    budget_schedule,
    effective_parameters,
    format_rank_table,
    orthogonal_regularization,
    orthogonality_errors,
    rank_grid,
    rank_report,
    train_adalora,
    triplet_score,
)
from lorakit.data import caesar_task
from lorakit.models import load_tiny_lm

ALL = "all-linear"


def make_layer(r: int = 4, alpha: float = 8, in_f: int = 10, out_f: int = 6, seed: int = 0) -> SVDLinear:
    torch.manual_seed(seed)
    layer = SVDLinear(nn.Linear(in_f, out_f), r=r, alpha=alpha)
    with torch.no_grad():
        layer.lora_E.copy_(torch.randn(r, 1))
    return layer


def model_with_grads(cfg: AdaLoRAConfig, seed: int = 0) -> nn.Module:
    """A TinyLM with AdaLoRA layers (non-zero E) and gradients from one backward pass."""
    model = apply_adalora(tiny_lm(seed), cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in adalora_layers(model).values():
            layer.lora_E.copy_(torch.randn(layer.lora_E.shape, generator=gen))
    backward(model, seed)
    return model


def backward(model: nn.Module, seed: int = 0) -> None:
    ids = torch.randint(0, 32, (3, 8), generator=torch.Generator().manual_seed(100 + seed))
    model(ids).square().mean().backward()


# ------------------------------------------------------------------------------------------ SVDLinear


def test_svdlinear_shapes_init_and_frozen_base():
    torch.manual_seed(0)
    base = nn.Linear(20, 12)
    layer = SVDLinear(base, r=5, alpha=3)
    assert layer.lora_A.shape == (5, 20) and layer.lora_E.shape == (5, 1) and layer.lora_B.shape == (12, 5)
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert all(p.requires_grad for p in (layer.lora_A, layer.lora_E, layer.lora_B))
    assert torch.count_nonzero(layer.lora_E) == 0 and layer.rank == 0
    assert layer.scaling == 3.0 and layer.ranknum.item() == 5.0
    assert layer.effective_scaling == pytest.approx(3 / (5 + 1e-5), rel=1e-12)
    assert "ranknum" not in layer.state_dict()  # as PEFT: never saved
    x = torch.randn(4, 20)
    assert torch.equal(layer(x), base(x))  # E = 0: the update starts at zero


def test_svdlinear_forward_is_p_lambda_q():
    layer = make_layer()
    x = torch.randn(7, 10, dtype=torch.float64).float()
    lam = torch.diag(layer.lora_E.view(-1))
    delta = layer.lora_B @ lam @ layer.lora_A * layer.alpha / (layer.r + RANKNUM_EPS)
    torch.testing.assert_close(layer(x), layer.base(x) + x @ delta.T, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.delta_weight(), delta, rtol=1e-5, atol=1e-7)
    assert layer.rank == 4


def test_masked_singular_value_removes_its_triplet():
    layer = make_layer()
    with torch.no_grad():
        layer.lora_E[1] = 0.0
    keep = [0, 2, 3]
    sub = layer.lora_B[:, keep] @ (layer.lora_A[keep] * layer.lora_E[keep]) * layer.scaling / (layer.r + RANKNUM_EPS)
    torch.testing.assert_close(layer.delta_weight(), sub)
    assert layer.rank == 3
    assert torch.linalg.matrix_rank(layer.delta_weight().detach(), rtol=1e-4).item() == 3


def test_merge_unmerge_roundtrip_and_warnings():
    layer = make_layer()
    x = torch.randn(5, 10)
    before = layer(x)
    w0 = layer.base.weight.clone()
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-6)
    with pytest.warns(MergeWarning):
        layer.merge()
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, w0, rtol=0, atol=1e-6)
    with pytest.warns(MergeWarning):
        layer.unmerge()
    with pytest.raises(RuntimeError):
        layer.merge()
        layer.reset_parameters()


def test_half_precision_base_keeps_fp32_adapters():
    layer = SVDLinear(nn.Linear(8, 8).to(torch.bfloat16), r=2)
    assert layer.lora_A.dtype == torch.float32 and layer.ranknum.dtype == torch.float32
    out = layer(torch.randn(3, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


def test_dropout_only_in_training():
    torch.manual_seed(0)
    layer = SVDLinear(nn.Linear(16, 16), r=4, dropout=0.5)
    with torch.no_grad():
        layer.lora_E.fill_(1.0)
    x = torch.randn(8, 16)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))


@pytest.mark.parametrize(
    "kwargs,err,word",
    [
        ({"base": nn.Conv1d(3, 3, 1)}, TypeError, "base"),
        ({"base": "linear"}, TypeError, "base"),
        ({"r": 0}, ValueError, "r"),
        ({"r": -2}, ValueError, "r"),
        ({"r": 2.0}, TypeError, "r"),
        ({"r": True}, TypeError, "r"),
        ({"alpha": 0}, ValueError, "alpha"),
        ({"alpha": float("nan")}, ValueError, "alpha"),
        ({"dropout": 1.0}, ValueError, "dropout"),
    ],
)
def test_svdlinear_bad_input(kwargs, err, word):
    args = {"base": nn.Linear(4, 4), "r": 2, "alpha": 8, "dropout": 0.0, **kwargs}
    with pytest.raises(err, match=word):
        SVDLinear(**args)


# ---------------------------------------------------------------------------------------- allocator


def test_budget_schedule_endpoints_and_monotone():
    model = apply_adalora(tiny_lm(), AdaLoRAConfig(init_r=8, target_r=2, total_step=100, target_modules=ALL))
    alloc = RankAllocator(model, target_r=2, tinit=10, tfinal=20, deltaT=5, total_step=100)
    assert alloc.init_budget == 8 * 7 * 2 and alloc.target_budget == 2 * 7 * 2
    budgets = [alloc.budget(s) for s in range(0, 110)]
    assert budgets[:11] == [alloc.init_budget] * 11
    assert budgets[80:] == [alloc.target_budget] * 30
    assert all(b1 >= b2 for b1, b2 in zip(budgets, budgets[1:], strict=False))
    # the cubic formula in between
    t = 45
    want = int((alloc.init_budget - alloc.target_budget) * (1 - (t - 10) / 70) ** 3 + alloc.target_budget)
    assert alloc.budget(t) == want
    masks = [s for s in range(110) if alloc.budget_schedule(s)[1]]
    assert masks == [s for s in range(11, 81) if s % 5 == 0] + list(range(81, 110))


def test_importance_scores_follow_the_formulas():
    cfg = AdaLoRAConfig(init_r=3, target_r=1, total_step=20, beta1=0.6, beta2=0.7, target_modules=["q_proj"])
    model = model_with_grads(cfg)
    alloc = RankAllocator.from_config(model)
    name = "layers.0.self_attn.q_proj"
    layer = adalora_layers(model)[name]
    alloc.update_ipt(model)
    i1 = (layer.lora_A * layer.lora_A.grad).abs()
    torch.testing.assert_close(alloc.ipt[f"{name}.lora_A"], i1)
    torch.testing.assert_close(alloc.exp_avg_ipt[f"{name}.lora_A"], 0.4 * i1)
    torch.testing.assert_close(alloc.exp_avg_unc[f"{name}.lora_A"], 0.3 * (i1 - 0.4 * i1).abs())
    # second step: a different gradient
    for p in model.parameters():
        p.grad = None
    backward(model, seed=5)
    alloc.update_ipt(model)
    i2 = (layer.lora_A * layer.lora_A.grad).abs()
    ibar = 0.6 * 0.4 * i1 + 0.4 * i2
    ubar = 0.7 * 0.3 * (0.6 * i1).abs() + 0.3 * (i2 - ibar).abs()
    torch.testing.assert_close(alloc.exp_avg_ipt[f"{name}.lora_A"], ibar)
    torch.testing.assert_close(alloc.exp_avg_unc[f"{name}.lora_A"], ubar)
    # triplet score: s(E_i) + mean_j s(A_ij) + mean_k s(B_ki)
    s = {k: alloc.exp_avg_ipt[f"{name}.{k}"] * alloc.exp_avg_unc[f"{name}.{k}"] for k in ("lora_A", "lora_E", "lora_B")}
    want = s["lora_E"][:, 0] + s["lora_A"].mean(1) + s["lora_B"].mean(0)
    torch.testing.assert_close(alloc.compute_triplet_scores()[name], want)


def test_mask_to_budget_keeps_the_top_scores_globally():
    cfg = AdaLoRAConfig(init_r=4, target_r=1, total_step=20, target_modules=ALL)
    model = model_with_grads(cfg)
    alloc = RankAllocator.from_config(model)
    alloc.update_ipt(model)
    scores = alloc.compute_triplet_scores()
    budget = 17
    pattern = alloc.mask_to_budget(model, budget)
    flat = torch.cat([scores[n] for n in alloc.names])
    kept = torch.cat([pattern[n] for n in alloc.names])
    assert int(kept.sum()) == budget
    assert flat[kept].min() > flat[~kept].max()
    report = rank_report(model)
    assert report == {n: int(pattern[n].sum()) for n in alloc.names}
    for name, layer in adalora_layers(model).items():
        assert torch.all(layer.lora_E[~pattern[name]] == 0)
    # a budget at (or above) the initial one masks nothing
    before = {n: layer.lora_E.clone() for n, layer in adalora_layers(model).items()}
    alloc2 = RankAllocator.from_config(model_with_grads(cfg, seed=0))
    alloc2.update_ipt(model)
    assert all(bool(k.all()) for k in alloc2.mask_to_budget(model, alloc2.init_budget).values())
    assert all(torch.equal(before[n], layer.lora_E) for n, layer in adalora_layers(model).items())


def test_update_and_allocate_three_phases():
    cfg = AdaLoRAConfig(init_r=4, target_r=1, tinit=1, tfinal=2, deltaT=2, total_step=8, target_modules=ALL)
    model = model_with_grads(cfg)
    alloc = RankAllocator.from_config(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    results = {}
    for step in range(11):
        if step:
            opt.zero_grad()
            backward(model, step)
        opt.step()
        results[step] = alloc.update_and_allocate(model, step)
        if step == 6:  # the final allocation: target budget, scores cleared
            assert sum(results[6].values()) == alloc.target_budget
            assert alloc.ipt == {} and alloc.exp_avg_ipt == {}
    assert [s for s, r in results.items() if r is not None] == [2, 4, 6, 7, 8, 9, 10]
    assert sum(results[2].values()) == alloc.budget(2) and sum(results[4].values()) == alloc.budget(4)
    final = results[6]
    for step in (7, 8, 9, 10):
        assert results[step] == final  # the final mask is frozen
    assert rank_report(model) == final
    assert sum(rank_report(model).values()) == alloc.target_budget


def test_update_before_backward_or_after_zero_grad_is_refused():
    cfg = AdaLoRAConfig(init_r=2, target_r=1, total_step=5, target_modules=["q_proj"])
    model = apply_adalora(tiny_lm(), cfg)
    alloc = RankAllocator.from_config(model)
    with pytest.raises(ValueError, match=r"model: .*has no \.grad.*before optimizer\.zero_grad"):
        alloc.update_and_allocate(model, 0)
    backward(model)
    model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="no .grad"):
        alloc.update_and_allocate(model, 0)


def test_final_phase_without_allocation_is_refused():
    cfg = AdaLoRAConfig(init_r=2, target_r=1, total_step=5, tfinal=2, target_modules=["q_proj"])
    model = model_with_grads(cfg)
    alloc = RankAllocator.from_config(model)
    with pytest.raises(RuntimeError, match="final allocation"):
        alloc.update_and_allocate(model, 3)
    with pytest.raises(RuntimeError, match="no allocation"):
        alloc.update_and_allocate(model, 4)


def test_allocator_refuses_another_model():
    cfg = AdaLoRAConfig(init_r=2, target_r=1, total_step=5, target_modules=["q_proj"])
    alloc = RankAllocator.from_config(model_with_grads(cfg))
    other = model_with_grads(AdaLoRAConfig(init_r=2, target_r=1, total_step=5, target_modules=["v_proj"]))
    with pytest.raises(ValueError, match="model: its SVDLinear layers differ"):
        alloc.update_and_allocate(other, 0)


@pytest.mark.parametrize(
    "kwargs,err,word",
    [
        ({"target_r": 5}, ValueError, "target_r"),
        ({"target_r": -1}, ValueError, "target_r"),
        ({"target_r": 1.5}, TypeError, "target_r"),
        ({"tinit": 8}, ValueError, "tinit"),
        ({"tinit": 3, "tfinal": 7}, ValueError, "tinit"),
        ({"tinit": -1}, ValueError, "tinit"),
        ({"tfinal": -1}, ValueError, "tfinal"),
        ({"deltaT": 0}, ValueError, "deltaT"),
        ({"total_step": 0}, ValueError, "total_step"),
        ({"total_step": 10.0}, TypeError, "total_step"),
        ({"beta1": 0.0}, ValueError, "beta1"),
        ({"beta1": 1.0}, ValueError, "beta1"),
        ({"beta2": 1.2}, ValueError, "beta2"),
        ({"beta2": -0.1}, ValueError, "beta2"),
        ({"beta1": "0.8"}, TypeError, "beta1"),
    ],
)
def test_allocator_bad_input(kwargs, err, word):
    model = apply_adalora(tiny_lm(), AdaLoRAConfig(init_r=2, target_r=1, total_step=5, target_modules=["q_proj"]))
    args = {"target_r": 1, "tinit": 0, "tfinal": 0, "deltaT": 1, "total_step": 8, **kwargs}
    with pytest.raises(err, match=word):
        RankAllocator(model, **args)


def test_allocator_needs_svd_layers_and_valid_step():
    with pytest.raises(ValueError, match="no SVDLinear"):
        RankAllocator(tiny_lm(), 1, 0, 0, 1, 5)
    with pytest.raises(TypeError, match="model"):
        RankAllocator("model", 1, 0, 0, 1, 5)
    model = apply_adalora(tiny_lm(), AdaLoRAConfig(init_r=2, target_r=1, total_step=5, target_modules=["q_proj"]))
    alloc = RankAllocator.from_config(model)
    for bad, err in ((-1, ValueError), (1.0, TypeError), (True, TypeError)):
        with pytest.raises(err, match="step"):
            alloc.budget(bad)
        with pytest.raises(err, match="step"):
            alloc.update_and_allocate(model, bad)
    with pytest.raises(TypeError, match="AdaLoRAConfig"):
        RankAllocator.from_config(tiny_lm())


# ------------------------------------------------------------------------- orthogonal regularization


def test_orthogonal_regularization_formula_and_zero_for_orthonormal_factors():
    model = apply_adalora(tiny_lm(), AdaLoRAConfig(init_r=3, target_r=1, total_step=5, target_modules=ALL))
    layers = adalora_layers(model)
    want = sum(
        torch.linalg.matrix_norm(lay.lora_A @ lay.lora_A.T - torch.eye(3))
        + torch.linalg.matrix_norm(lay.lora_B.T @ lay.lora_B - torch.eye(3))
        for lay in layers.values()
    ) / (2 * len(layers))
    reg = orthogonal_regularization(model)
    torch.testing.assert_close(reg, want)
    # near-zero init: every Gram matrix ~ 0, so R ~ ||I_3||_F = sqrt(3)
    assert reg.item() == pytest.approx(math.sqrt(3), rel=0.05)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for lay in layers.values():
            q, _ = torch.linalg.qr(torch.randn(lay.in_features, 3, generator=gen))
            p, _ = torch.linalg.qr(torch.randn(lay.out_features, 3, generator=gen))
            lay.lora_A.copy_(q.T)
            lay.lora_B.copy_(p)
    assert orthogonal_regularization(model).item() < 1e-5
    assert max(max(orthogonality_errors(lay)) for lay in layers.values()) < 1e-5
    reg = orthogonal_regularization(model)
    reg.backward()
    assert all(lay.lora_A.grad is not None for lay in layers.values())
    with pytest.raises(ValueError, match="no SVDLinear"):
        orthogonal_regularization(tiny_lm())
    with pytest.raises(TypeError, match="layer"):
        orthogonality_errors(nn.Linear(2, 2))


# ------------------------------------------------------------------------------------- model-level API


def test_config_defaults_match_peft():
    peft = pytest.importorskip("peft")
    ours = AdaLoRAConfig(total_step=100)
    theirs = peft.AdaLoraConfig(total_step=100)
    for name in ("init_r", "target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.alpha == theirs.lora_alpha and ours.dropout == theirs.lora_dropout
    d = AdaLoRAConfig(init_r=6, target_r=3, total_step=50, alpha=12, target_modules=["q_proj"]).to_peft_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = peft.AdaLoraConfig(**d)
    assert (cfg.init_r, cfg.target_r, cfg.lora_alpha, cfg.total_step) == (6, 3, 12, 50)


@pytest.mark.parametrize(
    "kwargs,err,word",
    [
        ({"total_step": None}, ValueError, "total_step"),
        ({"total_step": 0}, ValueError, "total_step"),
        ({"target_r": 13}, ValueError, "target_r"),
        ({"init_r": 0}, ValueError, "init_r"),
        ({"init_r": 4.0}, TypeError, "init_r"),
        ({"tinit": 10}, ValueError, "tinit"),
        ({"tinit": 4, "tfinal": 6}, ValueError, "tinit"),
        ({"beta1": 1}, ValueError, "beta1"),
        ({"beta2": 0}, ValueError, "beta2"),
        ({"orth_reg_weight": -0.1}, ValueError, "orth_reg_weight"),
        ({"orth_reg_weight": "0.5"}, TypeError, "orth_reg_weight"),
        ({"alpha": -1}, ValueError, "alpha"),
        ({"dropout": 1.5}, ValueError, "dropout"),
        ({"deltaT": 0}, ValueError, "deltaT"),
        ({"target_modules": []}, TypeError, "target_modules"),
        ({"target_modules": "(("}, ValueError, "target_modules"),
    ],
)
def test_config_bad_input(kwargs, err, word):
    with pytest.raises(err, match=word):
        AdaLoRAConfig(**{"total_step": 10, **kwargs})


def test_apply_adalora_replaces_and_freezes():
    model = tiny_lm()
    cfg = AdaLoRAConfig(init_r=3, target_r=1, total_step=5, target_modules=["q_proj", "down_proj"])
    out = apply_adalora(model, cfg)
    assert out is model and model.adalora_config is cfg
    layers = adalora_layers(model)
    assert sorted(layers) == sorted(f"layers.{i}.{m}" for i in (0, 1) for m in ("self_attn.q_proj", "mlp.down_proj"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(3 * (lay.in_features + lay.out_features + 1) for lay in layers.values())
    with pytest.raises(ValueError, match="already has adapter layers"):
        apply_adalora(model, cfg)
    with pytest.raises(ValueError, match="already has adapter layers"):
        apply_adalora(apply_lora(tiny_lm(), LoRAConfig()), cfg)
    with pytest.raises(ValueError, match="matched no nn.Linear"):
        apply_adalora(tiny_lm(), AdaLoRAConfig(total_step=5, target_modules=["nope"]))
    with pytest.raises(TypeError, match="config"):
        apply_adalora(tiny_lm(), LoRAConfig())
    with pytest.raises(TypeError, match="model"):
        apply_adalora("model", cfg)


def test_rank_report_grid_table_and_parameter_count():
    model = apply_adalora(tiny_lm(), AdaLoRAConfig(init_r=4, target_r=1, total_step=5, target_modules=ALL))
    layers = adalora_layers(model)
    with torch.no_grad():
        for i, lay in enumerate(layers.values()):
            lay.lora_E[: i % 5] = 1.0
    report = rank_report(model)
    assert list(report.values()) == [i % 5 for i in range(len(layers))]
    rows, cols, grid = rank_grid(report)
    assert rows == ["layers.0", "layers.1"]
    assert cols == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert grid[0][0] == report["layers.0.self_attn.q_proj"] and grid[1][6] == report["layers.1.mlp.down_proj"]
    table = format_rank_table(report)
    assert table.splitlines()[0].split() == ["layer", *cols, "total"]
    assert table.splitlines()[-1].split()[-1] == str(sum(report.values()))
    assert effective_parameters(model) == sum(
        report[n] * (lay.in_features + lay.out_features + 1) for n, lay in layers.items()
    )
    with pytest.raises(ValueError, match="no SVDLinear"):
        rank_report(tiny_lm())
    with pytest.raises(ValueError, match="report"):
        rank_grid({})
    assert rank_grid({"fc": 2}) == (["(root)"], ["fc"], [[2]])


# ----------------------------------------------------------------------------------------- training


def test_train_adalora_reaches_the_target_budget():
    train, heldout = caesar_task(n_train=64, n_eval=32)
    cfg = AdaLoRAConfig(init_r=4, target_r=2, tinit=2, tfinal=3, deltaT=2, total_step=12, target_modules=ALL)
    model = apply_adalora(load_tiny_lm(), cfg)
    hist = train_adalora(model, train, lr=5e-3, batch_size=16, eval_data=heldout, eval_every=6)
    assert len(hist.loss) == len(hist.budget) == len(hist.total_rank) == len(hist.orth_p) == 12
    assert hist.budget[0] == 4 * 14 and hist.budget[-1] == 2 * 14
    assert sum(rank_report(model).values()) == hist.total_rank[-1] == 2 * 14
    assert hist.eval_steps == [6, 12] and set(hist.final) == {"loss", "letter_acc", "exact_match"}
    assert not model.training
    with pytest.raises(ValueError, match="steps"):
        train_adalora(apply_adalora(load_tiny_lm(), cfg), train, steps=5)
    with pytest.raises(ValueError, match="orth_reg_weight"):
        train_adalora(apply_adalora(load_tiny_lm(), cfg), train, orth_reg_weight=-1.0)
    with pytest.raises(TypeError, match="data"):
        train_adalora(apply_adalora(load_tiny_lm(), cfg), "data")


def test_triplet_score_function_and_bad_shapes():
    gen = torch.Generator().manual_seed(0)
    sa, se, sb = torch.rand(3, 5, generator=gen), torch.rand(3, 1, generator=gen), torch.rand(4, 3, generator=gen)
    torch.testing.assert_close(triplet_score(sa, se, sb), se[:, 0] + sa.mean(1) + sb.mean(0))
    with pytest.raises(ValueError, match="score shapes"):
        triplet_score(sa, se, sb.T)
    with pytest.raises(ValueError, match="tinit"):
        budget_schedule(0, 10, 5, tinit=5, tfinal=5, deltaT=1, total_step=10)
    assert budget_schedule(7, 10, 5, tinit=0, tfinal=0, deltaT=1, total_step=10) == (5, True)


# ------------------------------------------------------------------------------------------ CUDA


@pytest.mark.cuda
def test_cuda_allocator_matches_cpu():
    import copy

    cfg = AdaLoRAConfig(init_r=4, target_r=1, tinit=1, tfinal=2, deltaT=2, total_step=8, target_modules=ALL)
    cpu = model_with_grads(cfg)
    gpu = copy.deepcopy(cpu).cuda()
    for p_gpu, p_cpu in zip(gpu.parameters(), cpu.parameters(), strict=True):  # deepcopy drops .grad
        if p_cpu.grad is not None:
            p_gpu.grad = p_cpu.grad.cuda()
    assert all(layer.lora_E.grad.is_cuda for layer in adalora_layers(gpu).values())
    alloc_cpu, alloc_gpu = RankAllocator.from_config(cpu), RankAllocator.from_config(gpu)
    for step in (1, 2):
        ranks_cpu = alloc_cpu.update_and_allocate(cpu, step)
        ranks_gpu = alloc_gpu.update_and_allocate(gpu, step)
        for key, value in alloc_cpu.exp_avg_ipt.items():
            assert alloc_gpu.exp_avg_ipt[key].is_cuda
            torch.testing.assert_close(alloc_gpu.exp_avg_ipt[key].cpu(), value, rtol=1e-4, atol=1e-7)
    assert sum(ranks_gpu.values()) == sum(ranks_cpu.values()) == alloc_cpu.budget(2)
    reg_cpu, reg_gpu = orthogonal_regularization(cpu), orthogonal_regularization(gpu)
    assert reg_gpu.is_cuda
    torch.testing.assert_close(reg_gpu.cpu(), reg_cpu, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        out = gpu(torch.randint(0, 32, (2, 8), device="cuda"))
    assert out.is_cuda and torch.isfinite(out).all()
