"""Tests for lorakit.check.nb12 (notebook 12's exercises): right -> True, wrong -> False, None -> False."""

from __future__ import annotations

import pytest
import torch
from builders import tiny_llama

from lorakit.check import nb12
from lorakit.serving import AdapterBank, random_adapter


def test_q1_choice() -> None:
    assert nb12.q1("b") is True
    assert nb12.q1(" B ") is True
    for wrong in ("a", "c", "d"):
        assert nb12.q1(wrong) is False
    assert nb12.q1("e") is False
    assert nb12.q1(None) is False


def test_q2_adapter_bytes() -> None:
    assert nb12.q2(32 * 2 * 16 * (4096 + 4096) * 2) is True
    assert nb12.q2(32 * 2 * 16 * (4096 + 4096)) is False  # numbers, not bytes
    assert nb12.q2(2 * 16 * (4096 + 4096) * 2) is False  # one layer only
    assert nb12.q2(None) is False


def test_q3_row_by_row_delta() -> None:
    def right(x, A, B, ids):
        out = torch.zeros(x.shape[0], B.shape[1], dtype=x.dtype)
        for t, i in enumerate(ids.tolist()):
            if i >= 0:
                out[t] = (x[t] @ A[i].T) @ B[i].T
        return out

    def ignores_base_rows(x, A, B, ids):  # row -1 silently takes the last adapter
        return torch.stack([(x[t] @ A[i].T) @ B[i].T for t, i in enumerate(ids.tolist())])

    assert nb12.q3(right) is True
    assert nb12.q3(ignores_base_rows) is False
    assert nb12.q3(lambda x, A, B, ids: x @ A[0].T @ B[0].T) is False
    assert nb12.q3(lambda *a: 1 / 0) is False
    assert nb12.q3(None) is False


def test_q4_padding_fraction_matches_a_real_bank() -> None:
    assert nb12.q4(1 - 8 / 64) is True
    assert nb12.q4(8 / 64) is False
    assert nb12.q4(None) is False
    base = tiny_llama()
    bank = AdapterBank(base, ["q_proj", "v_proj"], max_rank=16, capacity=1)
    bank.add_tensors("r4", *random_adapter(base, 4, ["q_proj", "v_proj"]))
    measured = 1 - bank.exact_nbytes("r4") / bank.adapter_nbytes("r4")
    assert measured == pytest.approx(nb12.padding_fraction(4, 16))
    with pytest.raises(ValueError, match="need 0 < r <= max_rank"):
        nb12.padding_fraction(32, 16)


def test_q5_matmul_pairs() -> None:
    assert nb12.matmul_pairs(nb12.Q5_IDS, grouped=True) == 2
    assert nb12.matmul_pairs(nb12.Q5_IDS, grouped=False) == 5
    assert nb12.q5((2, 5)) is True
    assert nb12.q5([2, 5]) is True
    assert nb12.q5((5, 2)) is False
    assert nb12.q5((3, 6)) is False  # counted the base-only run as a pair
    assert nb12.q5(2) is False
    assert nb12.q5(None) is False
