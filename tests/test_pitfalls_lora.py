"""lorakit.pitfalls.lora: each deliberately wrong snippet is wrong in exactly the way its docstring says."""

from __future__ import annotations

import math

import pytest
import torch

from lorakit.check.nb01 import bypass_flops
from lorakit.functional import lora_linear
from lorakit.lora import LoRALinear
from lorakit.memory import training_bytes
from lorakit.pitfalls.lora import (
    allclose_says_restored,
    compute_reduction_claim,
    dropout_on_both_paths,
    fp16_adam_bytes_without_master,
    merge_without_scaling,
    rank_rule_of_thumb,
)


def test_compute_reduction_claim_is_the_bypass_ratio_not_a_saving():
    d, r, layers, tokens = 4096, 16, 32, 2048
    claimed = compute_reduction_claim(d, r, layers, tokens)
    assert claimed == d / (2 * r)
    base = 4 * layers * 2 * tokens * d * d
    with_lora = base + 4 * layers * bypass_flops(tokens, d, d, r, "factored")
    assert with_lora / base == pytest.approx(1 + 2 * r / d)  # the forward costs more, not 128x less
    with pytest.raises(ValueError, match="r must be a positive int"):
        compute_reduction_claim(d, 0, layers, tokens)


def test_dropout_on_both_paths_perturbs_the_frozen_path():
    gen = torch.Generator().manual_seed(0)
    x, W = torch.randn(32, 8, generator=gen), torch.randn(6, 8, generator=gen)
    A, B = torch.randn(2, 8, generator=gen), torch.zeros(6, 2)
    wrong = dropout_on_both_paths(x, W, A, B, 2.0, p=0.5, generator=torch.Generator().manual_seed(1))
    right = lora_linear(x, W, None, A, B, 2.0, dropout_p=0.5, training=True)
    assert torch.equal(right, x @ W.T)  # B = 0: LoRA's dropout cannot touch the output
    change = wrong - x @ W.T
    assert int(torch.linalg.matrix_rank(change)) == 6  # full rank, not rank <= r
    assert torch.equal(dropout_on_both_paths(x, W, A, B, 2.0, p=0.0), x @ W.T + 2.0 * (x @ A.T) @ B.T)
    with pytest.raises(ValueError, match="p must be in"):
        dropout_on_both_paths(x, W, A, B, 2.0, p=1.0)


def test_merge_without_scaling_applies_one_over_s_of_the_update():
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(5, 3, dtype=torch.float64), r=2, alpha=8)
    torch.nn.init.normal_(layer.lora_B)
    W0 = layer.base.weight.detach().clone()
    wrong = merge_without_scaling(W0, layer.lora_A.detach(), layer.lora_B.detach())
    layer.merge()
    assert torch.allclose((wrong - W0) * layer.scaling, layer.base.weight - W0)
    assert not torch.allclose(wrong, layer.base.weight)


def test_allclose_says_restored_when_bits_changed():
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(64, 48), r=4, alpha=8)
    torch.nn.init.normal_(layer.lora_B, std=0.1)
    W0 = layer.base.weight.detach().clone()
    layer.merge()
    layer.unmerge()
    assert allclose_says_restored(W0, layer.base.weight)
    assert not torch.equal(W0, layer.base.weight)  # a few entries moved by one unit in the last place


def test_fp16_adam_bytes_without_master_is_half_the_real_count():
    n = 6_738_415_616
    assert fp16_adam_bytes_without_master(n) == 8 * n
    assert training_bytes(n, n).total == 2 * fp16_adam_bytes_without_master(n)
    with pytest.raises(ValueError, match="n_params"):
        fp16_adam_bytes_without_master(0)


def test_rank_rule_of_thumb():
    assert rank_rule_of_thumb(4096, 11008) == pytest.approx(16.0)
    assert rank_rule_of_thumb(128, 256) == pytest.approx(math.sqrt(128) / 4)
    with pytest.raises(ValueError, match="d_out"):
        rank_rule_of_thumb(128, -1)
