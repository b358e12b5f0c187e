"""Tests for lorakit.check.nb15 (notebook 15's exercises): right -> True, wrong -> False, None -> False."""

from __future__ import annotations

import pytest

from lorakit.check import nb15
from lorakit.kernels.roofline import count_traffic, dequant_bytes_per_weight, gather_bytes


def test_unpack_byte_is_high_nibble_first():
    assert nb15.unpack_byte(0xA7) == (10, 7)
    assert nb15.unpack_byte(0x0F) == (0, 15)


def test_q1_fused_bytes_per_weight():
    assert nb15.q1(0.5 + 1 / 64 + 4 / (64 * 256)) is True
    assert nb15.q1(0.516) is True
    assert nb15.q1(0.5 + 4 / 64) is False  # fp32 absmax: not double-quantized
    assert nb15.q1(2.516) is False  # counted a bf16 write
    assert nb15.q1(None) is False


def test_q2_two_step_time_bound():
    n = 4096 * 4096
    want = 1e6 * n * (0.5 + 1 / 64 + 4 / (64 * 256) + 2 + 2) / 3e12
    assert nb15.q2(want) is True
    assert nb15.q2(1e6 * n * 0.516 / 3e12) is False  # the fused bound
    assert nb15.q2(1e6 * n * 2.516 / 3e12) is False  # forgot the matmul's read
    assert nb15.q2(None) is False


def test_q3_unpacking_function():
    assert nb15.q3(lambda b: (b >> 4, b & 15)) is True
    assert nb15.q3(lambda b: (b & 15, b >> 4)) is False  # low nibble first: wrong order
    assert nb15.q3(lambda b: 1 / 0) is False  # an error is feedback, not a crash
    assert nb15.q3(None) is False


def test_q4_choice():
    assert nb15.q4("b") is True
    assert nb15.q4("B") is True
    assert all(nb15.q4(k) is False for k in "acd")
    assert nb15.q4("z") is False
    assert nb15.q4(None) is False


def test_q5_gather_bytes_equal_the_measured_traffic_of_the_gathered_copies():
    tokens, rank, d_in, d_out = nb15.Q5_SHAPE
    assert nb15.q5(2 * tokens * rank * (d_in + d_out) * 2) is True
    assert nb15.q5(tokens * rank * (d_in + d_out) * 2) is False  # written only
    assert nb15.q5(None) is False
    # the closed form is what the PyTorch gather + bmm really moves for its copies (small shapes)
    import torch

    from lorakit.serving import kernels

    A, B = torch.randn(3, 4, 20).bfloat16(), torch.randn(3, 12, 4).bfloat16()
    x, idx = torch.randn(6, 20).bfloat16(), torch.tensor([0, 1, 2, 2, 1, 0])
    _, traffic = count_traffic(lambda: kernels.bgmv(x, A, B, idx))
    ops = [op for op in traffic.ops if op.name in ("index_select", "bmm")]
    gathered_written = sum(op.written for op in ops if op.name == "index_select")
    assert gathered_written == gather_bytes(6, 4, 20, 12, 2) // 2


def test_dequant_bytes_rejects_bad_blocksize():
    with pytest.raises(ValueError, match="blocksize"):
        dequant_bytes_per_weight(2, 63)
