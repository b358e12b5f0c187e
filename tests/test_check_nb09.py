"""Tests for lorakit.check.nb09 (notebook 09's exercises): right -> True, wrong -> False, None -> False."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lorakit.check import nb09
from lorakit.dora import DoRALinear, magnitude_direction_change


def good_weight(W0, A, B, m, s):
    V = W0 + s * B @ A
    return m[:, None] * V / V.norm(dim=1, keepdim=True)


def test_q1_dora_weight() -> None:
    assert nb09.q1(good_weight) is True
    assert nb09.q1(lambda W0, A, B, m, s: m[:, None] * (W0 + s * B @ A)) is False  # no normalisation
    per_column = lambda W0, A, B, m, s: (W0 + s * B @ A) / (W0 + s * B @ A).norm(dim=0, keepdim=True)  # noqa: E731
    assert nb09.q1(per_column) is False
    assert nb09.q1(lambda *args: 1 / 0) is False
    assert nb09.q1(None) is False


def test_q1_reference_equals_the_merged_layer() -> None:
    torch.manual_seed(0)
    layer = DoRALinear(nn.Linear(6, 4, dtype=torch.float64), r=2, alpha=4)
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.magnitude.mul_(1.5)
    W0, A, B, m = (t.detach().clone() for t in (layer.base.weight, layer.lora_A, layer.lora_B, layer.magnitude))
    layer.merge()
    assert torch.allclose(layer.base.weight, nb09.dora_weight_reference(W0, A, B, m, layer.scaling))


def test_q2_parameter_count() -> None:
    assert nb09.q2(16 * (4096 + 11008) + 11008) is True
    assert nb09.q2(16 * (4096 + 11008) + 4096) is False  # per-input magnitude
    assert nb09.q2(16 * (4096 + 11008)) is False  # plain LoRA
    assert nb09.q2(2 * (4 + 3) + 3, d_in=4, d_out=3, r=2) is True
    assert nb09.q2(None) is False
    layer = DoRALinear(nn.Linear(12, 5), r=3, alpha=3)
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == nb09.dora_trainable_parameters(12, 5, 3)
    with pytest.raises(ValueError, match="r must be"):
        nb09.dora_trainable_parameters(4, 4, 0)


@pytest.mark.parametrize("q", [nb09.q3, nb09.q4])
def test_choices(q) -> None:
    assert q("b") is True
    assert q(" B") is True
    assert q("a") is False
    assert q("e") is False
    assert q(None) is False


def test_q5_magnitude_direction_change() -> None:
    def good(Wt, W0):
        dm = (Wt.norm(dim=1) - W0.norm(dim=1)).abs().mean().item()
        dd = (1 - F.cosine_similarity(Wt, W0, dim=1)).mean().item()
        return dm, dd

    def per_column(Wt, W0):
        dm = (Wt.norm(dim=0) - W0.norm(dim=0)).abs().mean().item()
        dd = (1 - F.cosine_similarity(Wt, W0, dim=0)).mean().item()
        return dm, dd

    assert nb09.q5(good) is True
    assert nb09.q5(per_column) is False
    assert nb09.q5(lambda Wt, W0: good(Wt, W0)[::-1]) is False
    assert nb09.q5(None) is False


def test_magnitude_direction_change_values() -> None:
    W0 = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    assert magnitude_direction_change(2 * W0, W0) == pytest.approx((3.0, 0.0), abs=1e-12)  # (5 + 1) / 2
    Wt = torch.tensor([[4.0, -3.0], [0.0, 1.0]])  # both rows rotated by 90 degrees, lengths kept
    assert magnitude_direction_change(Wt, W0) == pytest.approx((0.0, 1.0), abs=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        magnitude_direction_change(W0, W0.t()[:1])


def test_q6_rank_for_energy() -> None:
    s = torch.tensor(nb09.Q6_SINGULAR_VALUES, dtype=torch.float64)
    energy = (s**2).cumsum(0) / (s**2).sum()
    expected = int((energy < 0.9).sum()) + 1
    assert energy[expected - 1] >= 0.9 > energy[expected - 2]
    assert nb09.q6(expected) is True
    assert nb09.q6(expected - 1) is False
    by_values = int(((s.cumsum(0) / s.sum()) < 0.9).sum()) + 1  # summing s_i instead of s_i^2
    assert by_values != expected and nb09.q6(by_values) is False
    assert nb09.q6(float(expected)) is False
    assert nb09.q6(None) is False
    assert nb09.q6(1, singular_values=(3.0, 1.0), fraction=0.9) is True
