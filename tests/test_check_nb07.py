"""Tests for lorakit.check.nb07 (notebook 07's exercises): right -> True, wrong -> False, None -> False."""

from __future__ import annotations

import pytest
import torch

from lorakit.check import nb07
from lorakit.memory import LLAMA_SHAPES, llama_parameter_count
from lorakit.nf4 import bits_per_parameter, quantize_nf4


def test_bits_per_param_matches_measured_tensor() -> None:
    w = torch.randn(64 * 256 * 4)
    assert nb07.bits_per_param(64) == pytest.approx(bits_per_parameter(quantize_nf4(w)))
    assert nb07.bits_per_param(64, True) == pytest.approx(bits_per_parameter(quantize_nf4(w, double_quant=True)),
                                                          abs=1e-3)
    with pytest.raises(ValueError):
        nb07.bits_per_param(100)


def test_q1_bits_per_param() -> None:
    assert nb07.q1(4 + 32 / 128) is True
    assert nb07.q1(4.25) is True
    assert nb07.q1(4.5) is False  # blocksize 64's value
    assert nb07.q1(4) is False  # forgot the absmax
    assert nb07.q1(None) is False
    assert nb07.q1(4 + 32 / 256, blocksize=256) is True


def test_q2_double_quant_overhead() -> None:
    assert nb07.q2(8 / 64 + 32 / (64 * 256)) is True
    assert nb07.q2(0.127) is True
    assert nb07.q2(0.5) is False
    assert nb07.q2(4.127) is False  # the total, not the overhead
    assert nb07.q2(8 / 64) is False  # forgot the fp32 second-level scales (1.5 % off)
    assert nb07.q2(None) is False


def test_llama_base_bytes() -> None:
    n = llama_parameter_count("7B")
    assert nb07.llama_base_bytes("7B", "bf16") == 2 * n
    s = LLAMA_SHAPES["7B"]
    non_linear = 2 * s["vocab"] * s["d_model"] + (2 * s["n_layers"] + 1) * s["d_model"]
    linear = n - non_linear
    nf4 = nb07.llama_base_bytes("7B", "nf4")
    assert nf4 == pytest.approx(2 * non_linear + linear * 4.5 / 8, rel=1e-6)
    assert nb07.llama_base_bytes("7B", "nf4+dq") < nf4
    with pytest.raises(ValueError):
        nb07.llama_base_bytes("70B", "nf4")
    with pytest.raises(ValueError):
        nb07.llama_base_bytes("7B", "int4")


def test_q3_llama_gb() -> None:
    expected = nb07.llama_base_bytes("65B", "nf4+dq") / 1e9
    assert nb07.q3(expected) is True
    assert nb07.q3(round(expected, 1)) is True
    assert nb07.q3(expected * 1e9 / 2**30) is False  # GiB, not GB
    assert nb07.q3(llama_parameter_count("65B") * 0.5 / 1e9) is False  # 4 bits for everything, no overhead
    assert nb07.q3(None) is False
    assert nb07.q3(nb07.llama_base_bytes("7B", "nf4+dq") / 1e9, size="7B") is True


def test_q4_q5_choices() -> None:
    assert nb07.q4("c") is True
    assert nb07.q5("a") is True
    for wrong in ("a", "b", "d", "x"):
        assert nb07.q4(wrong) is False
    for wrong in ("b", "c", "d", "x"):
        assert nb07.q5(wrong) is False
    assert nb07.q4(None) is False
    assert nb07.q5(None) is False
