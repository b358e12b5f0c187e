"""Hypothesis property tests of LoRALinear: merge/unmerge, scaling rules, parameter count, rank."""

from __future__ import annotations

import math
import warnings

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lorakit.lora import LoRALinear, RankWarning, lora_scaling
from lorakit.widgets import lora_parameter_summary

PROPS = settings(max_examples=25, deadline=None, derandomize=True)

dims = st.integers(min_value=1, max_value=48)
ranks = st.integers(min_value=1, max_value=64)
alphas = st.one_of(st.integers(min_value=1, max_value=256), st.floats(min_value=1e-3, max_value=1e3))


def build(in_f: int, out_f: int, r: int, alpha: float, rslora: bool, seed: int, bias: bool = True) -> LoRALinear:
    """A LoRALinear with a random (non-zero) B; r above min(in, out) is allowed (RankWarning)."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankWarning)
        layer = LoRALinear(nn.Linear(in_f, out_f, bias=bias), r=r, alpha=alpha, rslora=rslora)
    with torch.no_grad():
        layer.lora_B.normal_(std=0.1)
    return layer


@PROPS
@given(in_f=dims, out_f=dims, r=ranks, alpha=alphas, rslora=st.booleans(), seed=st.integers(0, 2**16))
def test_merge_then_unmerge_restores_weight(in_f, out_f, r, alpha, rslora, seed):
    layer = build(in_f, out_f, r, alpha, rslora, seed)
    w0 = layer.base.weight.detach().clone()
    layer.merge()
    layer.unmerge()
    # fp32 rounding of (w0 + d) - d is at most ~ eps * (|w0| + |d|) per element.
    magnitude = w0.abs().max().item() + layer.delta_weight().abs().max().item()
    torch.testing.assert_close(layer.base.weight, w0, rtol=0, atol=1e-5 * max(magnitude, 1.0))


@PROPS
@given(in_f=dims, out_f=dims, r=ranks, alpha=alphas, rslora=st.booleans(), seed=st.integers(0, 2**16),
       bias=st.booleans(), n=st.integers(1, 6))
def test_merged_forward_equals_unmerged(in_f, out_f, r, alpha, rslora, seed, bias, n):
    layer = build(in_f, out_f, r, alpha, rslora, seed, bias)
    x = torch.randn(n, in_f)
    unmerged = layer(x).detach()
    layer.merge()
    merged = layer(x).detach()
    scale = unmerged.abs().max().item()
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5 * max(scale, 1.0))


@PROPS
@given(r=st.integers(1, 4096), alpha=alphas)
def test_scaling_rules(r, alpha):
    lora = lora_scaling(r, alpha)
    rs = lora_scaling(r, alpha, rslora=True)
    assert math.isclose(lora, alpha / r, rel_tol=1e-12)
    assert math.isclose(rs, alpha / math.sqrt(r), rel_tol=1e-12)
    assert math.isclose(rs / lora, math.sqrt(r), rel_tol=1e-12)


@PROPS
@given(in_f=dims, out_f=dims, r=ranks, alpha=alphas, rslora=st.booleans())
def test_layer_scaling_attribute(in_f, out_f, r, alpha, rslora):
    layer = build(in_f, out_f, r, alpha, rslora, seed=0)
    assert math.isclose(layer.scaling, alpha / (math.sqrt(r) if rslora else r), rel_tol=1e-12)


@PROPS
@given(in_f=dims, out_f=dims, r=ranks, bias=st.booleans())
def test_trainable_parameter_count(in_f, out_f, r, bias):
    layer = build(in_f, out_f, r, 8, False, seed=0, bias=bias)
    n_trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    assert n_trainable == r * (in_f + out_f)
    assert n_trainable == lora_parameter_summary(in_f, out_f, r)["lora"]
    n_frozen = sum(p.numel() for p in layer.parameters() if not p.requires_grad)
    assert n_frozen == in_f * out_f + (out_f if bias else 0)


@PROPS
@given(in_f=dims, out_f=dims, r=ranks, seed=st.integers(0, 2**16))
def test_delta_weight_rank_bounded(in_f, out_f, r, seed):
    layer = build(in_f, out_f, r, 8, False, seed)
    delta = layer.delta_weight().detach()  # fp32: matrix_rank's default tolerance is fp32's eps
    assert delta.shape == (out_f, in_f)
    assert int(torch.linalg.matrix_rank(delta)) <= min(r, in_f, out_f)
