"""The pure functions behind the teaching widgets (scaling, memory, NF4, parameters) and the shared UI rules."""

from __future__ import annotations

import math

import pytest

from lorakit.memory import llama_parameter_count, lora_parameter_count, training_bytes
from lorakit.nf4 import BLOCKSIZES
from lorakit.widgets import (
    activation_bytes,
    blocksize_tradeoff,
    code_usage,
    lora_parameter_summary,
    lora_parameter_text,
    memory_breakdown,
    nf4_levels_on_normal,
    rank_sweep_points,
    scaling_curves,
)
from lorakit.widgets._ui import error_line
from lorakit.widgets.memory import TARGET_SETS, memory_text
from lorakit.widgets.nf4 import nf4_text
from lorakit.widgets.parameters import lora_parameter_rows
from lorakit.widgets.scaling import scaling_text


# ----------------------------------------------------------------------------- parameters
def test_lora_parameter_text_is_rounded():
    text = lora_parameter_text(4096, 4096, 8)
    assert "65,536" in text and "16,777,216" in text and "256x fewer" in text and "0.391%" in text
    assert "extra rank" in lora_parameter_text(8, 16, 32)
    assert "131,072" in lora_parameter_text(4096, 4096, 8, n_layers=2)


@pytest.mark.parametrize("args, match", [((0, 8, 2), "d_in"), ((8, 8, 2, 0), "n_layers")])
def test_lora_parameter_text_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        lora_parameter_text(*args)


def test_lora_parameter_rows_linear_in_r():
    rows = lora_parameter_rows(128, 256)
    assert all(row["lora"] == row["r"] * (128 + 256) for row in rows)
    assert lora_parameter_summary(128, 256, 4) == {k: v for k, v in rows[2].items() if k != "r"}


# ----------------------------------------------------------------------------- scaling
def test_scaling_curves_exponents():
    c = scaling_curves(16, ranks=(1, 256))
    assert c["lora"] == [16, 16 / 256] and c["rslora"] == [16, 1]
    assert math.log(c["lora_grad"][1] / c["lora_grad"][0]) / math.log(256) == pytest.approx(-0.5)
    assert c["rslora_grad"][0] == pytest.approx(c["rslora_grad"][1])
    assert "alpha/r = 2" in scaling_text(8, 16) and "ratio sqrt(r) = 2.83" in scaling_text(8, 16)


def _sweep():
    runs = []
    for r in (1, 4):
        for rslora in (False, True):
            for lr, base in ((1e-3, 0.9), (1e-2, 0.5)):
                for seed in (0, 1, 2):
                    loss = base - 0.1 * rslora * math.log2(r) - 0.01 * seed
                    runs.append({"r": r, "rslora": rslora, "lr": lr, "seed": seed,
                                 "loss_at": {"50": 1.0, "100": None if (r, lr, seed) == (4, 1e-2, 2) else loss}})
    return {"provenance": {}, "results": {"task": {"record_at": [50, 100]}, "runs": runs}}


def test_rank_sweep_points_best_and_fixed_lr():
    best = rank_sweep_points(_sweep())
    assert [p["r"] for p in best["lora"]] == [1, 4] and all(p["lr"] == 1e-2 for p in best["lora"])
    p = best["rslora"][1]
    assert p["seeds"] == 2 and p["mean"] == pytest.approx(0.5 - 0.2 - 0.005) and p["lo"] <= p["mean"] <= p["hi"]
    fixed = rank_sweep_points(_sweep(), lr=1e-3)
    assert all(p["lr"] == 1e-3 and p["seeds"] == 3 for p in fixed["lora"])
    early = rank_sweep_points(_sweep(), step=50)
    assert all(p["mean"] == 1.0 for p in early["lora"])


@pytest.mark.parametrize("kwargs, match", [({"lr": 5e-3}, "swept learning rates")])
def test_rank_sweep_points_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rank_sweep_points(_sweep(), **kwargs)
    with pytest.raises(ValueError, match="runs"):
        rank_sweep_points({"results": {}})


def test_rank_sweep_points_on_the_stored_run_if_present():
    from lorakit.widgets import load_rank_sweep

    stored = load_rank_sweep()
    if stored is None:
        pytest.skip("data/results/nb03_lr_sweep.json not made yet (make results)")
    points = rank_sweep_points(stored)
    assert points["lora"] and points["rslora"]
    assert all(math.isfinite(p["mean"]) and p["seeds"] >= 1 for p in points["lora"] + points["rslora"])


# ----------------------------------------------------------------------------- memory
def test_memory_breakdown_static_parts_match_training_bytes():
    b = memory_breakdown("7B", 16, TARGET_SETS["q, k, v, o"], batch=1, seq_len=512)
    n, n_lora = llama_parameter_count("7B"), lora_parameter_count("7B", 16)
    full = training_bytes(n, n)
    assert b["full FT"]["weights"] * 2**30 == pytest.approx(full.weights)
    assert b["full FT"]["optimizer"] * 2**30 == pytest.approx(full.master_weights + full.optimizer_states)
    assert b["LoRA"]["gradients"] * 2**30 == pytest.approx(2 * n_lora)
    assert b["QLoRA"]["weights"] < b["LoRA"]["weights"] / 3.5
    assert b["full FT"]["activations"] == b["LoRA"]["activations"] == b["QLoRA"]["activations"]
    for m in b.values():
        assert m["total"] == pytest.approx(sum(m[k] for k in ("weights", "gradients", "optimizer", "activations")))
    assert "full FT:" in memory_text(b) and "QLoRA:" in memory_text(b)


def test_activation_bytes_scaling():
    one = activation_bytes("7B", 1, 1024)
    assert activation_bytes("7B", 4, 1024) == 4 * one
    assert activation_bytes("7B", 1, 1024, checkpointing=True) < one / 5
    assert activation_bytes("7B", 1, 1024, fused_attention=False) > one
    # per token per layer: 2 bytes x (8 d + 4 d_ff), plus fp32 logits
    assert one == 1024 * (32 * 2 * (8 * 4096 + 4 * 11008) + 4 * 32000)


@pytest.mark.parametrize("kwargs, match", [({"batch": 0}, "batch"), ({"seq_len": -1}, "seq_len"),
                                           ({"r": 0}, "r must"), ({"size": "3B"}, "size")])
def test_memory_breakdown_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        memory_breakdown(**{"size": "7B", **kwargs})


# ----------------------------------------------------------------------------- nf4
def test_nf4_levels_and_usage():
    levels = nf4_levels_on_normal()
    assert len(levels) == 16 and levels[7] == 0 and levels == sorted(levels)
    assert levels[-1] == pytest.approx(1.8481, abs=1e-3)  # Q(0.9677083)
    usage = code_usage(64)
    assert sum(usage["fractions"]) == pytest.approx(1) and 3.5 < usage["entropy_bits"] < 4
    assert code_usage(4096)["entropy_bits"] < usage["entropy_bits"]  # big blocks squeeze the middle levels


def test_blocksize_tradeoff_is_a_tradeoff():
    rows = blocksize_tradeoff()
    assert [r["blocksize"] for r in rows] == list(BLOCKSIZES)
    bits = [r["bits"] for r in rows]
    rmse = [r["rmse"] for r in rows]
    assert bits == sorted(bits, reverse=True) and rmse == sorted(rmse)
    assert rows[1]["bits"] == pytest.approx(4.5) and rows[1]["bits_dq"] == pytest.approx(4.127, abs=1e-3)
    assert all(r["bits_dq"] < r["bits"] for r in rows)
    assert "4.5 bits per weight" in nf4_text(64, False) and "double quantization" in nf4_text(64, True)
    with pytest.raises(ValueError, match="blocksize must be one of"):
        blocksize_tradeoff((48,))


# ----------------------------------------------------------------------------- shared UI rules
def test_error_line_is_one_line():
    assert error_line(ValueError("d_in must be a positive int, got 0\nmore")) == (
        "check the input: d_in must be a positive int, got 0")
    assert error_line(RuntimeError("")) == "could not update (RuntimeError): RuntimeError"
