"""Notebook 09's stored results (data/results/nb09_dora.json, made by scripts/results_nb09_dora.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from builders import load_script

from lorakit.results import load_results
from lorakit.sweeps.dora_runs import TrackedRun, arm_label, best_lrs, tracked_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stored():
    return load_results("nb09_dora")


def test_stored_file_is_the_scripts_sweep(stored):
    script, res = load_script("results_nb09_dora.py"), stored["results"]
    records = res["records"]
    assert stored["provenance"]["seeds"] == list(script.SEEDS) and len(script.SEEDS) >= 3
    assert stored["provenance"]["wall_seconds"] > 0 and "torch" in stored["provenance"]["versions"]
    assert res["config"]["steps"] == script.STEPS and res["config"]["checkpoints"] == list(script.CHECKPOINTS)
    runs = [TrackedRun.from_config(rec["config"]) for rec in records]
    assert len({dataclasses.astuple(r) for r in runs}) == len(runs)  # no duplicate run
    arms = {}
    for run, rec in zip(runs, records, strict=True):
        assert run.steps == script.STEPS and run.checkpoints == script.CHECKPOINTS
        assert rec["eval_steps"] == list(range(0, script.STEPS + 1, 25))
        assert len(rec["exact_match"]) == len(rec["loss"]) == len(rec["eval_steps"])
        assert set(rec["changes"]) == {str(t) for t in script.CHECKPOINTS}
        assert all(len(table) == 14 for table in rec["changes"].values())
        arms.setdefault(arm_label(rec), {}).setdefault(run.lr, set()).add(run.seed)
    assert arms["full FT"] == {script.FULL_LR: set(script.SEEDS)}
    for method in ("LoRA", "DoRA"):  # r = 8: every lr with every seed; the lower ranks: all seeds at the chosen lr
        assert arms[f"{method} r=8"] == {lr: set(script.SEEDS) for lr in script.LRS}
        lr = res["best_lr_r8"][f"{method} r=8"]
        for r in script.RANKS:
            assert arms[f"{method} r={r}"][lr] == set(script.SEEDS)
        other = {lr2 for lr2 in script.LRS if lr2 != lr}
        assert {k for k in arms[f"{method} r={script.CHECK_RANK}"] if k != lr} == other
    # the stored choice of lr is what best_lrs gives on the stored r = 8 runs
    r8 = [rec for rec in records if rec["config"]["method"] != "full" and rec["config"]["r"] == 8]
    assert best_lrs(r8) == res["best_lr_r8"]
    assert set(res["truncation"]) == {str(s) for s in script.SEEDS}
    assert all(list(v) == [str(k) for k in script.TRUNCATION_RANKS] for v in res["truncation"].values())


def test_every_method_starts_at_the_pretrained_model(stored):
    # B = 0 (LoRA, DoRA) and no step yet (full FT): the step-0 evaluation is the same for every run
    step0 = {(rec["exact_match"][0], rec["loss"][0]) for rec in stored["results"]["records"]}
    assert len(step0) == 1 and next(iter(step0))[0] == 0.0


def test_a_stored_run_replays_exactly(stored):
    # the runs are deterministic on CPU: the first 25 steps of a stored config give the stored numbers
    rec = next(r for r in stored["results"]["records"] if r["config"]["method"] == "lora" and r["config"]["r"] == 2)
    run = dataclasses.replace(TrackedRun.from_config(rec["config"]), steps=25, checkpoints=(25,), spectra=())
    _, live = tracked_run(run)
    assert live["exact_match"] == rec["exact_match"][:2]
    assert live["loss"] == pytest.approx(rec["loss"][:2], abs=1e-4)
    for name, (dm, dd) in live["changes"]["25"].items():
        assert (dm, dd) == pytest.approx(tuple(rec["changes"]["25"][name]), abs=1e-5), name


def test_the_file_is_plain_json():
    text = (ROOT / "data" / "results" / "nb09_dora.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text)
