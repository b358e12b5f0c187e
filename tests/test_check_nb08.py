"""Tests for lorakit.check.nb08 (notebook 08's exercises): right -> True, wrong -> False, None -> False."""

from __future__ import annotations

import pytest
import torch

from lorakit.check import nb08
from lorakit.memory import llama_linear_shapes, llama_shape
from lorakit.nf4 import dequantize_nf4, quantize_nf4


def test_q1_bits_per_parameter() -> None:
    by_formula = 4 + 8 / 64 + 32 / (64 * 256)
    assert nb08.q1(by_formula) is True
    assert nb08.q1(round(by_formula, 4)) is True
    assert nb08.q1(4.5) is False  # no double quantization: fp32 absmax per 64 weights
    assert nb08.q1(4.125) is False  # forgot the fp32 second-level scale
    assert nb08.q1(4) is False  # the code alone
    assert nb08.q1("4.127") is False
    assert nb08.q1(None) is False
    assert nb08.q1(4 + 8 / 128 + 32 / (128 * 256), blocksize=128) is True


def test_q1_matches_quantized_bytes() -> None:
    w = torch.randn(512, 512, generator=torch.Generator().manual_seed(0))
    q = quantize_nf4(w, blocksize=64, double_quant=True)
    assert 8 * q.nbytes / q.numel == pytest.approx(nb08.nf4_dq_bits_per_parameter(), rel=1e-3)


def test_q2_linear_gib() -> None:
    s = llama_shape("65B")
    numel = s["n_layers"] * sum(i * o for i, o in llama_linear_shapes("65B").values())
    bits = 4 + 8 / 64 + 32 / (64 * 256)
    assert nb08.q2(numel * bits / 8 / 2**30) is True
    assert nb08.q2(numel * 0.5 / 2**30) is False  # 4 bits flat, constants forgotten
    assert nb08.q2(numel * bits / 8 / 1e9) is False  # decimal GB
    assert nb08.q2(numel * 4.5 / 8 / 2**30) is False  # without double quantization
    n7 = llama_shape("7B")["n_layers"] * sum(i * o for i, o in llama_linear_shapes("7B").values())
    assert nb08.q2(n7 * bits / 8 / 2**30, size="7B") is True
    assert nb08.q2(None) is False
    with pytest.raises(ValueError, match="size must be"):
        nb08.q2(1.0, size="70B")


def test_q3_forward() -> None:
    def right(x, q, lora_A, lora_B, scaling):
        return x @ dequantize_nf4(q, dtype=x.dtype).T + scaling * (x @ lora_A.T) @ lora_B.T

    def no_scaling(x, q, lora_A, lora_B, scaling):
        return x @ dequantize_nf4(q, dtype=x.dtype).T + (x @ lora_A.T) @ lora_B.T

    def transposed(x, q, lora_A, lora_B, scaling):  # uses the codes' layout the wrong way round
        w = dequantize_nf4(q, dtype=x.dtype)
        return x @ w.reshape(w.shape[1], w.shape[0]) + scaling * (x @ lora_A.T) @ lora_B.T

    def packed_codes(x, q, lora_A, lora_B, scaling):  # treats the packed bytes as weights
        raise TypeError("uint8")

    assert nb08.q3(right) is True
    assert nb08.q3(no_scaling) is False
    assert nb08.q3(transposed) is False
    assert nb08.q3(packed_codes) is False
    assert nb08.q3(None) is False


@pytest.mark.parametrize(("check", "correct"), [(nb08.q4, "b"), (nb08.q5, "c")])
def test_choices(check, correct: str) -> None:
    assert check(correct) is True
    assert check(f" {correct.upper()} ") is True
    for wrong in "abcd":
        if wrong != correct:
            assert check(wrong) is False
    assert check("e") is False
    assert check(None) is False
