"""Notebook 02's stored results (data/results/nb02_init.json, made by scripts/results_nb02_init.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from builders import load_script

from lorakit.results import load_results
from lorakit.sweeps import STARTS, RunConfig, course_tasks, finetune

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stored():
    return load_results("nb02_init")


def test_script_configs_are_valid_and_cover_the_grid():
    script = load_script("results_nb02_init.py")
    assert set(script.STARTS) <= set(STARTS)
    assert len(script.SEEDS) >= 3 and len(script.LRS) >= 3
    assert len(script.CONFIGS) == len(script.STARTS) * len(script.LRS) * len(script.SEEDS)
    assert len({dataclasses.astuple(c) for c in script.CONFIGS}) == len(script.CONFIGS)  # no duplicate run
    for cfg in script.CONFIGS:
        assert isinstance(cfg, RunConfig) and cfg.method == "lora" and cfg.base == "pretrained"
        assert (cfg.r, cfg.alpha, cfg.steps, cfg.eval_every) == (8, 16, script.STEPS, 25)


def test_stored_file_is_the_scripts_sweep(stored):
    script = load_script("results_nb02_init.py")
    records = stored["results"]["records"]
    assert [RunConfig(**rec["config"]) for rec in records] == script.CONFIGS  # the same runs, in the same order
    seeds = sorted({rec["config"]["seed"] for rec in records})
    assert len(seeds) >= 3 and stored["provenance"]["seeds"] == seeds
    assert stored["provenance"]["wall_seconds"] > 0 and "torch" in stored["provenance"]["versions"]
    for rec in records:
        steps = rec["config"]["steps"]
        assert rec["eval_steps"] == list(range(0, steps + 1, rec["config"]["eval_every"]))
        assert len(rec["train_loss"]) == steps
        assert rec["data"] == {"n_train": 512, "caesar": 256, "copy": 256, "rot1": 256}
        for task in ("caesar", "copy", "rot1"):
            for values in rec["metrics"][task].values():
                assert len(values) == len(rec["eval_steps"])


def test_starts_with_a_zero_factor_begin_at_the_pretrained_model(stored):
    # B0 A0 = 0 for every start but random_A_random_B: their step-0 evaluations are identical for every seed and lr
    records = stored["results"]["records"]
    step0 = {(rec["config"]["start"], rec["config"]["lr"], rec["config"]["seed"]):
             {task: {k: v[0] for k, v in m.items()} for task, m in rec["metrics"].items()} for rec in records}
    clean = [v for (start, _, _), v in step0.items() if start != "random_A_random_B"]
    assert all(v == clean[0] for v in clean)
    assert clean[0]["copy"]["exact_match"] == 1.0 and clean[0]["rot1"]["exact_match"] == 1.0
    perturbed = [v for (start, _, _), v in step0.items() if start == "random_A_random_B"]
    assert all(v["copy"]["loss"] > 100 * clean[0]["copy"]["loss"] for v in perturbed)


def test_a_stored_run_replays_exactly(stored):
    # the runs are deterministic on CPU: the first 25 steps of a stored config give the stored numbers
    rec = next(r for r in stored["results"]["records"]
               if r["config"]["start"] == "zero_A_random_B" and r["config"]["seed"] == 1)
    cfg = dataclasses.replace(RunConfig(**rec["config"]), steps=25)
    _, live = finetune(cfg, course_tasks(n_train=512, n_eval=256))
    assert live["train_loss"] == pytest.approx(rec["train_loss"][:25], abs=1e-4)
    for task, metrics in live["metrics"].items():
        for key, values in metrics.items():
            assert values == pytest.approx(rec["metrics"][task][key][:2], abs=1e-4), (task, key)
