"""Tests for lorakit.check.nb13 (notebook 13's exercises): right -> True, wrong -> False, None -> False."""

from __future__ import annotations

import pytest
import torch

from lorakit.check import nb13
from lorakit.family import VeRAConfig, apply_vera, prefix_cache_bytes
from lorakit.family.prefix_tuning import PrefixTuningConfig, apply_prefix_tuning
from lorakit.models import TinyLM, TinyLMConfig


def test_q1_ia3_count():
    assert nb13.q1(32 * (4096 + 4096 + 11008)) is True
    assert nb13.q1(32 * (4096 + 4096 + 4096)) is False  # down_proj's OUTPUT instead of its input
    assert nb13.q1(None) is False
    assert nb13.q1(80 * (2 * 8192 + 22016), size="65B") is True


def test_q1_reference_equals_apply_ia3_on_a_llama_shaped_model():
    import lorakit
    from lorakit.family import apply_ia3
    from lorakit.memory import llama_shape

    shape = llama_shape("7B")
    small = TinyLMConfig(vocab_size=8, d_model=64, n_layers=3, n_heads=4, d_ff=96)
    model = apply_ia3(TinyLM(small))

    assert lorakit.trainable_parameters(model)[0] == 3 * (2 * 64 + 96)
    assert nb13.ia3_llama_parameters("7B") == shape["n_layers"] * (2 * shape["d_model"] + shape["d_ff"])


def test_q2_prefix_cache_bytes():
    assert nb13.q2(2 * 32 * 20 * 4096 * 2) is True
    assert nb13.q2(32 * 20 * 4096 * 2) is False  # keys only
    assert nb13.q2(2 * 32 * 20 * 4096 * 4) is False  # fp32
    assert nb13.q2(None) is False
    model = apply_prefix_tuning(TinyLM(TinyLMConfig(d_model=32, n_heads=4, d_ff=64)), PrefixTuningConfig(5))
    kv = model.past_key_values(batch_size=2)
    assert sum(t.numel() * t.element_size() for p in kv for t in p) == prefix_cache_bytes(5, 2, 32, 2, 4)


@pytest.mark.parametrize("answer, ok", [("c", True), (" C", True), ("a", False), ("d", False), ("z", False),
                                        (None, False)])
def test_q3_choice(answer, ok):
    assert nb13.q3(answer) is ok


def test_q4_vera_count():
    assert nb13.q4(lambda r, shapes: sum(r + out for out, _ in shapes)) is True
    assert nb13.q4(lambda r, shapes: sum(r * (i + o) for o, i in shapes)) is False  # LoRA's count
    assert nb13.q4(lambda r, shapes: sum(r + i for _, i in shapes)) is False  # d_in instead of d_out
    assert nb13.q4(lambda *a: 1 / 0) is False
    assert nb13.q4(None) is False


def test_q4_reference_equals_a_real_vera_model():
    import lorakit

    torch.manual_seed(0)
    tiny = TinyLM(TinyLMConfig(d_model=32, n_heads=4, d_ff=64))
    model = apply_vera(tiny, VeRAConfig(r=12, target_modules="all-linear"))
    shapes = [tuple(m.base.weight.shape) for m in lorakit.adapter_layers(model).values()]
    assert nb13.vera_parameters_reference(12, shapes) == lorakit.trainable_parameters(model)[0]
    with pytest.raises(ValueError, match="shapes"):
        nb13.vera_parameters_reference(4, [])
