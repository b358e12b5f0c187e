"""lorakit.analysis: spectra, effective rank, energy in the top r, subspace similarity, magnitude/direction."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lorakit import LoRAConfig, apply_lora
from lorakit.adalora import AdaLoRAConfig, apply_adalora
from lorakit.analysis import (
    effective_rank,
    effective_weights,
    energy_in_top,
    linear_fit,
    low_rank_approximation,
    magnitude_direction_changes,
    rank_for_energy,
    singular_values,
    stable_rank,
    subspace_similarity,
    weight_deltas,
)
from lorakit.dora import magnitude_direction_change
from lorakit.models import load_tiny_lm
from lorakit.qlora import apply_qlora


def low_rank(d_out: int, d_in: int, sv: list[float], seed: int = 0) -> torch.Tensor:
    """A matrix with exactly the singular values ``sv`` (random orthonormal factors)."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(d_out, len(sv), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d_in, len(sv), generator=g, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(sv, dtype=torch.float64)) @ v.T


def test_singular_values_descending_float64() -> None:
    m = low_rank(12, 9, [3.0, 2.0, 1.0])
    s = singular_values(m.float())
    assert s.dtype == torch.float64 and s.shape == (9,)
    assert torch.allclose(s[:3], torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64), atol=1e-5)
    assert s[3:].abs().max() < 1e-5 and bool((s[:-1] >= s[1:]).all())


def test_energy_and_rank_for_energy() -> None:
    m = low_rank(10, 8, [3.0, 1.0])  # energies 9 and 1 of 10
    assert energy_in_top(m, 0) == 0.0
    assert energy_in_top(m, 1) == pytest.approx(0.9)
    assert energy_in_top(m, 2) == pytest.approx(1.0)
    assert energy_in_top(m, 100) == pytest.approx(1.0)
    assert rank_for_energy(m, 0.9) == 1
    assert rank_for_energy(m, 0.95) == 2
    assert rank_for_energy(m, 1.0) == 2
    # 1-D input: singular values in any order
    assert energy_in_top(torch.tensor([1.0, 3.0]), 1) == pytest.approx(0.9)


def test_energy_is_eckart_young_optimal() -> None:
    m = torch.randn(20, 15, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    for r in (1, 3, 7):
        best = u[:, :r] @ torch.diag(s[:r]) @ vh[:r]
        kept = 1 - (m - best).square().sum() / m.square().sum()
        assert energy_in_top(m, r) == pytest.approx(float(kept))
        other = torch.randn(20, r, dtype=torch.float64) @ torch.randn(r, 15, dtype=torch.float64)
        proj = other @ torch.linalg.lstsq(other, m).solution  # the best fit within another rank-r column space
        assert float(1 - (m - proj).square().sum() / m.square().sum()) <= energy_in_top(m, r) + 1e-9


def test_low_rank_approximation() -> None:
    m = torch.randn(20, 15, generator=torch.Generator().manual_seed(4))
    for r in (0, 1, 5, 15, 40):
        approx = low_rank_approximation(m, r)
        assert approx.shape == m.shape and approx.dtype == m.dtype
        assert int(torch.linalg.matrix_rank(approx.double(), atol=1e-6)) == min(r, 15)
        kept = 1 - float((m - approx).double().square().sum() / m.double().square().sum())
        assert kept == pytest.approx(energy_in_top(m, r), abs=1e-5)
    assert torch.allclose(low_rank_approximation(m, 15), m, atol=1e-5)
    assert low_rank_approximation(m.bfloat16(), 2).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="r must"):
        low_rank_approximation(m, -1)


def test_effective_and_stable_rank() -> None:
    assert effective_rank(low_rank(8, 8, [2.0])) == pytest.approx(1.0)
    assert effective_rank(low_rank(8, 8, [1.0] * 5)) == pytest.approx(5.0)
    assert effective_rank(torch.eye(6)) == pytest.approx(6.0)
    assert 1.0 < effective_rank(torch.tensor([3.0, 1.0])) < 2.0
    assert stable_rank(torch.tensor([3.0, 1.0])) == pytest.approx(10 / 9)
    assert stable_rank(torch.eye(4)) == pytest.approx(4.0)
    # scale invariant
    m = torch.randn(9, 7, generator=torch.Generator().manual_seed(2))
    assert effective_rank(5 * m) == pytest.approx(effective_rank(m))
    assert stable_rank(5 * m) == pytest.approx(stable_rank(m))


def test_subspace_similarity() -> None:
    m = low_rank(16, 10, [4.0, 3.0, 2.0, 1.0])
    assert subspace_similarity(m, m, 4, 4) == pytest.approx(1.0)
    assert subspace_similarity(m, 2 * m, 2, 4) == pytest.approx(1.0)  # top-2 inside top-4
    # orthogonal column spaces: 0
    e = torch.eye(16, dtype=torch.float64)
    assert subspace_similarity(e[:, :3], e[:, 3:6], 3, 3) == pytest.approx(0.0, abs=1e-12)
    # random subspaces of R^d: about j / d
    g = torch.Generator().manual_seed(3)
    sims = [subspace_similarity(torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g), 8, 8)
            for _ in range(5)]
    assert sum(sims) / 5 == pytest.approx(8 / 400, rel=0.5)
    assert 0.0 <= min(sims) and max(sims) <= 1.0


def test_linear_fit() -> None:
    fit = linear_fit([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 5.0, 7.0])
    assert fit.slope == pytest.approx(2.0) and fit.intercept == pytest.approx(1.0) and fit.r == pytest.approx(1.0)
    neg = linear_fit(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 1.0, 2.0]))
    assert neg.slope < 0 and -1 <= neg.r < 0
    assert linear_fit([1, 2, 3], [5, 5, 5]).r == 0.0


def test_bad_input_names_the_argument() -> None:
    with pytest.raises(TypeError, match="matrix"):
        singular_values([[1.0]])
    with pytest.raises(ValueError, match="matrix"):
        singular_values(torch.zeros(2, 2, 2))
    with pytest.raises(TypeError, match="matrix"):
        singular_values(torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN"):
        singular_values(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="r must"):
        energy_in_top(torch.eye(3), -1)
    with pytest.raises(ValueError, match="x is zero"):
        energy_in_top(torch.zeros(3, 3), 1)
    with pytest.raises(ValueError, match="x is zero"):
        effective_rank(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=">= 0"):
        stable_rank(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="fraction"):
        rank_for_energy(torch.eye(3), 1.5)
    with pytest.raises(ValueError, match="same number of rows"):
        subspace_similarity(torch.eye(3), torch.eye(4), 1, 1)
    with pytest.raises(ValueError, match="j must"):
        subspace_similarity(torch.eye(3), torch.eye(3), 1, 4)
    with pytest.raises(ValueError, match="same number of points"):
        linear_fit([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="constant"):
        linear_fit([1.0, 1.0], [1.0, 2.0])
    with pytest.raises(TypeError, match="x must"):
        linear_fit(["a", "b"], [1.0, 2.0])
    with pytest.raises(TypeError, match="model"):
        effective_weights("model")
    with pytest.raises(ValueError, match="same layers"):
        magnitude_direction_changes({"a": torch.eye(2)}, {"b": torch.eye(2)})
    with pytest.raises(TypeError, match="after"):
        weight_deltas({}, {"b": torch.eye(2)})
    with pytest.raises(ValueError, match="same shape"):
        weight_deltas({"a": torch.eye(2)}, {"a": torch.eye(3)})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes_and_autocast(dtype: torch.dtype) -> None:
    m = low_rank(12, 10, [3.0, 1.0]).to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert energy_in_top(m, 1) == pytest.approx(0.9, abs=2e-2)
        assert effective_rank(m) == pytest.approx(effective_rank(low_rank(12, 10, [3.0, 1.0])), abs=0.1)
        assert subspace_similarity(m, m, 2, 2) == pytest.approx(1.0, abs=1e-2)


@pytest.mark.cuda
def test_cuda() -> None:
    m = low_rank(12, 10, [3.0, 1.0]).float().cuda()
    assert singular_values(m).device.type == "cuda"
    assert energy_in_top(m, 1) == pytest.approx(0.9, abs=1e-5)
    assert subspace_similarity(m, m, 2, 2) == pytest.approx(1.0, abs=1e-5)
    assert linear_fit(torch.arange(3.0).cuda(), torch.arange(3.0).cuda()).slope == pytest.approx(1.0)


def _perturb(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_effective_weights_of_every_kind() -> None:
    plain = load_tiny_lm()
    w0 = effective_weights(plain)
    assert len(w0) == 14 and not any("lm_head" in n for n in w0)
    assert torch.equal(w0["layers.0.self_attn.q_proj"], plain.layers[0].self_attn.q_proj.weight)

    lora = apply_lora(load_tiny_lm(), LoRAConfig(r=4, alpha=8, target_modules="all-linear"))
    _perturb(lora, 0)
    wl = effective_weights(lora)
    assert set(wl) == set(w0)
    layer = lora.get_submodule("layers.1.mlp.down_proj")
    assert torch.allclose(wl["layers.1.mlp.down_proj"], layer.base.weight + layer.delta_weight())
    x = torch.randn(3, layer.in_features)
    assert torch.allclose(layer(x), x @ wl["layers.1.mlp.down_proj"].T + (0 if layer.base.bias is None else
                                                                           layer.base.bias), atol=1e-5)
    layer.merge()  # a merged layer is read once, not twice
    assert torch.allclose(effective_weights(lora)["layers.1.mlp.down_proj"], wl["layers.1.mlp.down_proj"], atol=1e-6)

    dora = apply_lora(load_tiny_lm(), LoRAConfig(r=4, alpha=8, target_modules="all-linear", use_dora=True))
    _perturb(dora, 1)
    wd = effective_weights(dora)
    layer = dora.get_submodule("layers.0.self_attn.v_proj")
    assert torch.allclose(wd["layers.0.self_attn.v_proj"].norm(dim=1), layer.magnitude.detach(), rtol=1e-5)

    q = apply_qlora(load_tiny_lm(), LoRAConfig(r=4, alpha=8, target_modules="all-linear"))
    wq = effective_weights(q)
    layer = q.get_submodule("layers.0.self_attn.q_proj")
    assert torch.equal(wq["layers.0.self_attn.q_proj"], layer.dequantized_weight(torch.float32))  # B = 0

    ada = apply_adalora(load_tiny_lm(), AdaLoRAConfig(init_r=4, target_r=2, total_step=10, tinit=1, tfinal=1,
                                                      target_modules="all-linear"))
    _perturb(ada, 2)
    wa = effective_weights(ada)
    layer = ada.get_submodule("layers.1.mlp.up_proj")
    assert torch.allclose(wa["layers.1.mlp.up_proj"], layer.base.weight + layer.delta_weight(), atol=1e-6)


def test_deltas_and_magnitude_direction() -> None:
    before = effective_weights(load_tiny_lm())
    model = load_tiny_lm()
    with torch.no_grad():
        model.layers[0].self_attn.q_proj.weight.mul_(1.1)  # magnitude only: ΔD = 0
    after = effective_weights(model)
    deltas = weight_deltas(after, before)
    assert torch.allclose(deltas["layers.0.self_attn.q_proj"], 0.1 * before["layers.0.self_attn.q_proj"], atol=1e-6)
    assert float(deltas["layers.1.mlp.up_proj"].abs().max()) == 0.0
    changes = magnitude_direction_changes(after, before)
    dm, dd = changes["layers.0.self_attn.q_proj"]
    w = before["layers.0.self_attn.q_proj"].double()
    assert dm == pytest.approx(float(0.1 * w.norm(dim=1).mean()), rel=1e-5)
    assert dd == pytest.approx(0.0, abs=1e-7)
    assert changes["layers.1.mlp.up_proj"] == (0.0, pytest.approx(0.0, abs=1e-12))
    assert changes["layers.0.self_attn.k_proj"] == magnitude_direction_change(after["layers.0.self_attn.k_proj"],
                                                                              before["layers.0.self_attn.k_proj"])
    assert math.isfinite(dm)


def test_checkpoint_recorder_matches_a_split_run() -> None:
    from lorakit.analysis import CheckpointRecorder
    from lorakit.data import caesar_task
    from lorakit.training import seed_everything, train

    data, heldout = caesar_task(n_train=64, n_eval=16)
    seed_everything(0)
    model = apply_lora(load_tiny_lm(), LoRAConfig(r=2, alpha=4, target_modules=["q_proj"]))
    with CheckpointRecorder(model, steps=[0, 2, 5]) as rec:
        train(model, data, steps=5, lr=1e-2, batch_size=8, eval_data=heldout, eval_every=1)  # evals not counted
    assert sorted(rec.checkpoints) == [0, 2, 5] and rec.calls == 5
    assert torch.equal(rec.checkpoints[5]["layers.0.self_attn.q_proj"],
                       effective_weights(model)["layers.0.self_attn.q_proj"])
    # step 2 of the same run, retrained from scratch for 2 steps with the same seed and batches
    seed_everything(0)
    again = apply_lora(load_tiny_lm(), LoRAConfig(r=2, alpha=4, target_modules=["q_proj"]))
    train(again, data, steps=2, lr=1e-2, batch_size=8)
    assert torch.equal(rec.checkpoints[2]["layers.0.self_attn.q_proj"],
                       effective_weights(again)["layers.0.self_attn.q_proj"])
    assert torch.equal(rec.checkpoints[0]["layers.0.self_attn.q_proj"],
                       load_tiny_lm().layers[0].self_attn.q_proj.weight)
    assert not model._forward_pre_hooks  # the hook is removed


def test_checkpoint_recorder_bad_input() -> None:
    from lorakit.analysis import CheckpointRecorder

    with pytest.raises(ValueError, match="steps"):
        CheckpointRecorder(nn.Linear(2, 2), steps=[])
    with pytest.raises(ValueError, match="steps"):
        CheckpointRecorder(nn.Linear(2, 2), steps=[-1])
    with pytest.raises(TypeError, match="model"):
        CheckpointRecorder("m", steps=[1])
    with pytest.raises(TypeError, match="read"):
        CheckpointRecorder(nn.Linear(2, 2), steps=[1], read=3)
