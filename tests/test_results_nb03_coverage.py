"""Notebook 03, section 6: lorakit.sweeps.forgetting, and the stored run scripts/results_nb03_lora_vs_full.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import load_script

from lorakit.results import load_results
from lorakit.sweeps import RunConfig, arm_of, best_lr, course_tasks, finetune, select
from lorakit.sweeps.forgetting import forgetting, generalisation_gap, tradeoff

ROOT = Path(__file__).resolve().parent.parent


def fake_record() -> dict:
    curves = {
        "caesar": {"loss": [5.0, 2.0, 0.5], "letter_acc": [0.1, 0.5, 0.9], "exact_match": [0.0, 0.25, 0.75]},
        "copy": {"loss": [0.01, 3.0, None], "letter_acc": [1.0, 0.4, 0.2], "exact_match": [1.0, 0.5, 0.0]},
        "train": {"loss": [5.0, 1.0, 0.1], "letter_acc": [0.1, 0.7, 1.0], "exact_match": [0.0, 0.5, 1.0]},
    }
    return {"eval_steps": [0, 25, 50], "metrics": curves}


def test_forgetting_is_the_drop_from_the_pretrained_value():
    rec = fake_record()
    assert forgetting(rec) == 1.0  # exact match on copy: 1.0 at step 0, 0.0 at the end
    assert forgetting(rec, step=25) == 0.5
    assert forgetting(rec, metric="letter_acc") == pytest.approx(0.8)
    assert forgetting(rec, metric="loss", step=25) == pytest.approx(2.99)  # a rise of the loss is forgetting too
    assert forgetting(rec, metric="loss") is None  # the last loss was not finite
    assert forgetting(rec, step=0) == 0.0


def test_tradeoff_pairs_target_and_forgetting_at_every_step():
    assert tradeoff(fake_record()) == [(0, 0.0, 0.0), (25, 0.25, 0.5), (50, 0.75, 1.0)]
    loss = tradeoff(fake_record(), metric="loss", target_metric="exact_match")
    assert [(s, t) for s, t, _ in loss] == [(0, 0.0), (25, 0.25), (50, 0.75)]
    assert loss[1][2] == pytest.approx(2.99) and loss[2][2] is None


def test_generalisation_gap_is_train_minus_heldout():
    rec = fake_record()
    assert generalisation_gap(rec) == 0.25
    assert generalisation_gap(rec, step=25) == 0.25
    assert generalisation_gap(rec, metric="loss") == pytest.approx(0.4)  # held-out loss minus training loss
    assert generalisation_gap(rec, step=0) == 0.0


@pytest.mark.parametrize("call, error, message", [
    (lambda r: forgetting(r, task="rot1"), ValueError, "task 'rot1' was not evaluated"),
    (lambda r: forgetting(r, metric="accuracy"), ValueError, "metric must be one of"),
    (lambda r: forgetting(r, step=30), ValueError, "step 30 was not evaluated"),
    (lambda r: forgetting(r, step=25.0), TypeError, "step must be an int"),
    (lambda r: generalisation_gap(r, heldout="rot1"), ValueError, "task 'rot1' was not evaluated"),
])
def test_bad_arguments_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call(fake_record())


def test_on_a_real_run():
    tasks = course_tasks(n_train=16, n_eval=8, eval_train=True)
    _, rec = finetune(RunConfig(method="full", lr=3e-3, steps=4, eval_every=2, batch_size=8), tasks)
    assert rec["metrics"]["copy"]["exact_match"][0] == 1.0  # the pretrained model copies
    assert forgetting(rec, "copy") == 1.0 - rec["metrics"]["copy"]["exact_match"][-1]
    train, held = rec["metrics"]["train"]["exact_match"][-1], rec["metrics"]["caesar"]["exact_match"][-1]
    assert generalisation_gap(rec) == train - held
    with pytest.raises(ValueError, match="task 'train' was not evaluated"):
        generalisation_gap(finetune(RunConfig(steps=1), course_tasks(n_train=8, n_eval=4))[1])


def test_stored_run_matches_the_script():
    script = load_script("results_nb03_lora_vs_full.py")
    stored = load_results(script.NAME)
    res = stored["results"]
    assert stored["provenance"]["seeds"] == list(script.SEEDS)
    scan = [r for r in res["compare"] if r["config"]["seed"] == 0]
    assert [RunConfig(**r["config"]) for r in scan] == script.SCAN  # the scan is seed 0 at every lr
    best = best_lr(scan)
    assert best == res["settings"]["best_lr_scan"]
    for arm, lr in best.items():  # three seeds at each arm's best lr of the scan
        assert sorted(r["config"]["seed"] for r in select(res["compare"], arm, lr=lr)) == list(script.SEEDS)
    assert [RunConfig(**r["config"]) for r in res["weight_decay"]] == script.wd_configs(res["settings"]["wd_lr"])
    assert res["settings"]["wd_lr"] == best[f"lora r={script.WD_RANK}"]
    assert [RunConfig(**r["config"]) for r in res["small_data"]] == script.SMALL
    assert all(r["data"]["n_train"] == script.SMALL_N and "train" in r["metrics"] for r in res["small_data"])
    assert all(r["data"]["n_train"] == 512 for r in res["compare"] + res["weight_decay"])
    assert {arm_of(r) for r in res["compare"]} == {"full", "lora r=1 alpha=2", "lora r=8", "lora r=64 alpha=128"}
