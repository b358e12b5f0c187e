"""lorakit.sweeps.dora_runs: notebook 09's tracked runs (full FT, LoRA, DoRA) and how their records are read."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lorakit.analysis import effective_weights
from lorakit.data import caesar_task
from lorakit.dora import DoRALinear
from lorakit.lora import LoRALinear
from lorakit.sweeps.dora_runs import (
    TrackedRun,
    arm_label,
    best_lrs,
    build_tracked_model,
    checkpoint_fit,
    steps_table,
    tracked_run,
    truncated_update_scores,
)
from lorakit.training import seed_everything


@pytest.fixture(scope="module")
def data():
    return caesar_task()


def short(method: str, **kw) -> TrackedRun:
    return TrackedRun(method=method, steps=10, eval_every=5, checkpoints=(5, 10), spectra=(10,), **kw)


@pytest.mark.parametrize("kw, match", [
    ({"method": "qlora"}, "method"), ({"r": 0}, "r must"), ({"steps": 0}, "steps must"), ({"lr": 0.0}, "lr must"),
    ({"lr": math.nan}, "lr must"), ({"alpha": -1.0}, "alpha must"), ({"seed": -1}, "seed must"),
    ({"checkpoints": (500,)}, "checkpoints"), ({"checkpoints": [50]}, "checkpoints"),
    ({"spectra": (100,), "checkpoints": (50,)}, "spectra must be a subset"), ({"eval_every": True}, "eval_every"),
])
def test_tracked_run_config_refuses_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        TrackedRun(**kw)


def test_build_tracked_model_methods():
    full = build_tracked_model(TrackedRun(method="full"))
    assert all(p.requires_grad for p in full.parameters())
    lora = build_tracked_model(TrackedRun(method="lora", r=2))
    dora = build_tracked_model(TrackedRun(method="dora", r=2))
    lora_layers = [m for m in lora.modules() if isinstance(m, LoRALinear) and not isinstance(m, DoRALinear)]
    assert len(lora_layers) == 14 and lora_layers[0].scaling == 2.0  # alpha = 2r by default
    assert sum(isinstance(m, DoRALinear) for m in dora.modules()) == 14
    with pytest.raises(TypeError, match="run must be a TrackedRun"):
        build_tracked_model({"method": "full"})


@pytest.mark.parametrize("method", ["full", "lora", "dora"])
def test_tracked_run_record(method, data):
    run = short(method, r=2)
    _, rec = tracked_run(run, data)
    assert rec["eval_steps"] == [0, 5, 10] and len(rec["exact_match"]) == len(rec["loss"]) == 3
    assert set(rec["changes"]) == {"5", "10"} and set(rec["spectra"]) == {"10"}
    assert len(rec["changes"]["10"]) == 14
    for dm, dd in rec["changes"]["10"].values():
        assert dm >= 0 and 0 <= dd <= 2
    if method == "lora":  # the update of LoRA is B A: rank <= r
        for s in rec["spectra"]["10"].values():
            assert sum(v > 1e-5 * s[0] for v in s) <= 2
    assert TrackedRun.from_config(rec["config"]) == dataclasses.replace(run, alpha=rec["config"]["alpha"])
    assert rec["config"]["alpha"] == (None if method == "full" else 4.0)
    assert rec["trainable"] > 0


def test_tracked_run_is_deterministic_and_a_prefix_replays(data):
    _, a = tracked_run(short("dora"), data)
    _, b = tracked_run(dataclasses.replace(short("dora"), steps=5, checkpoints=(5,), spectra=()), data)
    assert a["exact_match"][:2] == b["exact_match"] and a["loss"][:2] == b["loss"]
    assert a["changes"]["5"] == b["changes"]["5"]


def test_checkpoint_fit_reads_one_cross_section():
    rec = {"changes": {"50": {"a": [1.0, 0.1], "b": [2.0, 0.2], "c": [3.0, 0.3]}}}
    fit = checkpoint_fit(rec, 50)  # dM = 10 dD exactly
    assert fit.slope == pytest.approx(10.0) and fit.r == pytest.approx(1.0)
    rec["changes"]["50"]["c"] = [0.0, 0.3]
    assert checkpoint_fit(rec, "50").r < 0
    with pytest.raises(ValueError, match="not a checkpoint"):
        checkpoint_fit(rec, 100)


def test_truncated_update_scores(data):
    seed_everything(0)
    model = build_tracked_model(TrackedRun(method="full"))
    before = effective_weights(model)
    with torch.no_grad():
        model.layers[0].self_attn.q_proj.weight.add_(0.01 * torch.randn(128, 128))
    snapshot = {k: v.clone() for k, v in effective_weights(model).items()}
    scores = truncated_update_scores(model, before, data[1], [0, 128])
    assert set(scores) == {0, 128} and all(0 <= v <= 1 for v in scores.values())
    assert all(torch.equal(v, snapshot[k]) for k, v in effective_weights(model).items())  # model unchanged
    with pytest.raises(ValueError, match="ranks"):
        truncated_update_scores(model, before, data[1], [-1])
    with pytest.raises(TypeError, match="fully fine-tuned"):
        truncated_update_scores(build_tracked_model(TrackedRun(method="lora")), before, data[1], [1])


def fake(method: str, r: int, lr: float, seed: int, steps: int | None, loss: float = 1.0) -> dict:
    return {"config": {"method": method, "r": r, "lr": lr, "seed": seed, "eval_every": 25},
            "steps_to_threshold": steps, "eval_steps": [0, 25, 400], "loss": [3.0, 2.0, loss]}


def test_labels_tables_and_best_lrs():
    records = [fake("lora", 2, 1e-3, 0, 300), fake("lora", 2, 3e-3, 0, None), fake("lora", 2, 3e-3, 1, 100),
               fake("dora", 2, 1e-3, 0, None, 0.5), fake("dora", 2, 3e-3, 0, None, 0.1), fake("full", 8, 1e-3, 0, 50)]
    assert [arm_label(r) for r in records[2:]] == ["LoRA r=2", "DoRA r=2", "DoRA r=2", "full FT"]
    table = steps_table(records)
    assert table["LoRA r=2"] == {1e-3: {0: 300}, 3e-3: {0: None, 1: 100}}
    assert best_lrs(records, seeds=[0]) == {"LoRA r=2": 1e-3, "DoRA r=2": 3e-3, "full FT": 1e-3}  # DoRA: by loss
    assert best_lrs(records)["LoRA r=2"] == 3e-3  # median of (never = 425, 100) is 262.5 < 300
    with pytest.raises(ValueError, match="no records"):
        best_lrs(records, seeds=[7])
