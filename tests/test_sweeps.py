"""lorakit.sweeps: seeded fine-tuning runs, their records, and notebook 03's teacher-student task."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from lorakit.data import decode
from lorakit.lora import LoRALinear
from lorakit.peft import lora_layers
from lorakit.results import load_results
from lorakit.sweeps import (
    STARTS,
    RunConfig,
    arm_of,
    best_lr,
    best_rank_r_loss,
    build_model,
    course_tasks,
    finetune,
    lr_table,
    per_seed,
    population_loss,
    run_sweep_script,
    select,
    steps_to,
    sweep,
    teacher_student_layer,
    teacher_student_run,
    teacher_student_task,
    value_at,
)
from lorakit.training import train


@pytest.fixture(scope="module")
def tasks():
    return course_tasks(n_train=64, n_eval=16, eval_train=True)


def test_course_tasks_share_the_heldout_words(tasks):
    assert set(tasks.evals) == {"caesar", "copy", "rot1", "train"}
    prompts = {name: [decode(row).split(sep)[0] for row in tasks.evals[name].input_ids]
               for name, sep in (("caesar", ">"), ("copy", "="), ("rot1", ">"))}
    assert prompts["caesar"] == prompts["copy"] == prompts["rot1"]
    copies = [decode(row).split("=")[1] for row in tasks.evals["copy"].input_ids]
    assert copies == [word + "." for word in prompts["copy"]]
    small = course_tasks(n_train=16, n_eval=16)
    assert torch.equal(small.train.input_ids, tasks.train.input_ids[:16])  # a prefix of the larger training set
    assert tasks.evals["train"] is tasks.train
    with pytest.raises(ValueError, match="n_train must be a positive int"):
        course_tasks(n_train=0)


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "prefix"}, "method must be one of"), ({"start": "orthogonal"}, "start must be one of"),
    ({"base": "imagenet"}, "base must be"), ({"steps": 0}, "steps must be a positive int"),
    ({"r": 2.0}, "r must be a positive int"), ({"seed": -1}, "seed must be a non-negative int"),
    ({"lr": float("nan")}, "lr must be a finite number"), ({"lr": 0}, "lr must be a finite number"),
    ({"weight_decay": -0.1}, "weight_decay must be"), ({"alpha": True}, "alpha must be"),
])
def test_run_config_rejects_bad_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**kwargs)


def test_finetune_is_lorakit_training_train(tasks):
    """The sweeps' loop is the course's loop: the same losses, bit for bit, and the same trained weights."""
    cfg = RunConfig(steps=6, eval_every=3, lr=3e-3, seed=1)
    model, record = finetune(cfg, tasks)
    reference = build_model(cfg)
    history = train(reference, tasks.train, steps=6, lr=3e-3, seed=1)
    assert record["train_loss"] == [float(f"{x:.6g}") for x in history.loss]
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert record["eval_steps"] == [0, 3, 6]
    assert record["data"] == {"n_train": 64, "caesar": 16, "copy": 16, "rot1": 16, "train": 64}
    assert record["metrics"]["copy"]["exact_match"][0] == 1.0  # step 0 is the pretrained model
    assert record["config"] == dataclasses.asdict(cfg)
    json.dumps(record, allow_nan=False)  # JSON-ready


def test_finetune_is_deterministic_and_seeded(tasks):
    cfg = RunConfig(steps=3, eval_every=3)
    assert finetune(cfg, tasks)[1] == finetune(cfg, tasks)[1]
    other = finetune(dataclasses.replace(cfg, seed=1), tasks)[1]
    assert other["train_loss"] != finetune(cfg, tasks)[1]["train_loss"]


def test_build_model_starts_and_methods():
    for start, (_, random_b) in STARTS.items():
        layers = lora_layers(build_model(RunConfig(start=start)))
        b_zero = all(bool((layer.lora_B == 0).all()) for layer in layers.values())
        a_zero = all(bool((layer.lora_A == 0).all()) for layer in layers.values())
        assert b_zero == (not random_b), start
        assert a_zero == (start in ("zeros", "zero_A_random_B")), start
    layer = next(iter(lora_layers(build_model(RunConfig(start="random_A_random_B", r=4))).values()))
    assert layer.lora_B.abs().max() <= 1 / math.sqrt(4)  # Kaiming bound of a fan-in-r layer
    full = build_model(RunConfig(method="full"))
    assert not lora_layers(full) and all(p.requires_grad for p in full.parameters())
    lora = build_model(RunConfig())
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    random_base = build_model(RunConfig(base="random", method="full"))
    assert not torch.equal(random_base.lm_head.weight, full.lm_head.weight)
    assert torch.equal(build_model(RunConfig(base="random", method="full", seed=3)).lm_head.weight,
                       build_model(RunConfig(base="random", method="full", seed=3)).lm_head.weight)
    with pytest.raises(TypeError, match="cfg must be a RunConfig"):
        build_model({"method": "lora"})


def test_zeros_start_never_moves(tasks):
    model, record = finetune(RunConfig(start="zeros", steps=4, eval_every=2), tasks)
    for layer in lora_layers(model).values():
        assert bool((layer.lora_A == 0).all()) and bool((layer.lora_B == 0).all())
    assert len(set(record["metrics"]["caesar"]["loss"])) == 1


def fake(method="lora", lr=1e-3, seed=0, em=(0.0, 0.5, 1.0), copy=(1.0, 0.4, 0.2), loss=(3.0, 1.0, 0.1), **kw):
    cfg = dataclasses.asdict(RunConfig(method=method, lr=lr, seed=seed, steps=50, **kw))
    return {"config": cfg, "eval_steps": [0, 25, 50],
            "metrics": {"caesar": {"exact_match": list(em), "loss": list(loss)}, "copy": {"exact_match": list(copy)}}}


def test_steps_to_and_value_at():
    rec = fake()
    assert steps_to(rec, 0.9) == 50 and steps_to(rec, 0.5) == 25 and steps_to(rec, 1.1) is None
    assert value_at(rec, 25) == 0.4 and value_at(rec, None) is None
    assert value_at(rec, steps_to(rec, 0.9), task="caesar", metric="loss") == 0.1
    with pytest.raises(ValueError, match="was not evaluated"):
        value_at(rec, 30)
    rec["metrics"]["caesar"]["exact_match"][1] = None  # a diverged evaluation never counts as reached
    assert steps_to(rec, 0.0) == 0


def test_arm_of_select_and_per_seed():
    assert arm_of(fake()) == "lora r=8"
    assert arm_of(fake(method="full")) == "full"
    assert arm_of(fake(start="zero_A_random_B", weight_decay=0.1)) == "lora r=8 zero_A_random_B wd=0.1"
    assert arm_of(fake(rslora=True, base="random")) == "lora r=8 rslora random base"
    records = [fake(lr=lr, seed=s) for lr in (1e-3, 1e-2) for s in (0, 1)] + [fake(method="full")]
    assert len(select(records, arm="lora r=8")) == 4 and len(select(records, lr=1e-2)) == 2
    assert len(select(records, arm="lora r=8", lr=1e-2, seed=1)) == 1
    with pytest.raises(ValueError, match="unknown config fields"):
        select(records, rank=8)
    assert per_seed(select(records, arm="lora r=8", lr=1e-3), steps_to) == {0: 50, 1: 50}
    with pytest.raises(ValueError, match="two records for seed 0"):
        per_seed(records, steps_to)


def test_best_lr_prefers_fewer_steps_then_lower_loss():
    records = [fake(lr=1e-3, seed=s) for s in (0, 1, 2)]  # threshold at step 50
    records += [fake(lr=3e-3, seed=s, em=(0, 0.95, 1)) for s in (0, 1, 2)]  # at step 25: best
    records += [fake(lr=1e-2, seed=s, em=(0, 0, 0), loss=(3, 3, 3)) for s in (0, 1, 2)]  # never
    records += [fake(method="full", lr=lr, seed=0, em=(0, 0, 0), loss=(3, f, f))
                for lr, f in ((1e-4, 2.0), (1e-3, 1.0))]
    assert best_lr(records) == {"lora r=8": 3e-3, "full": 1e-3}
    table = lr_table(records)
    assert table["lora r=8"][1e-2][0] == 75  # never reached: one evaluation after the last step
    assert list(table["lora r=8"]) == [1e-3, 3e-3, 1e-2]


def test_sweep_and_store(tasks, tmp_path, monkeypatch):
    configs = [RunConfig(steps=2, eval_every=2, seed=s) for s in (0, 1)]
    seen = []
    records = sweep(configs, tasks, on_record=seen.append)
    assert len(records) == 2 and seen == records
    with pytest.raises(TypeError, match="RunConfig"):
        sweep([{"steps": 2}], tasks)
    path = run_sweep_script("sweep_test", configs, tasks, ["--quick"], extra={"note": 1})
    stored = json.loads(path.read_text())
    assert stored["results"]["note"] == 1 and len(stored["results"]["records"]) == 2
    assert stored["provenance"]["seeds"] == [0, 1] and stored["provenance"]["wall_seconds"] >= 0
    smaller = course_tasks(n_train=16, n_eval=16)
    path = run_sweep_script("sweep_test", configs, [tasks, smaller], ["--quick"])
    assert [rec["data"]["n_train"] for rec in json.loads(path.read_text())["results"]["records"]] == [64, 16]
    with pytest.raises(ValueError, match="one per config"):
        run_sweep_script("sweep_test", configs, [tasks], ["--quick"])


def test_teacher_student_task_and_layer():
    w0, dw = teacher_student_task(d=32)
    assert w0.shape == dw.shape == (32, 32)
    assert torch.linalg.svdvals(dw).norm().item() == pytest.approx(1.0, rel=1e-5)
    assert torch.linalg.matrix_rank(dw) == 32
    assert best_rank_r_loss(dw, 32) == pytest.approx(0.0, abs=1e-10)
    assert best_rank_r_loss(dw, 1) == pytest.approx(1 - torch.linalg.svdvals(dw.double())[0].item() ** 2)
    layer = teacher_student_layer(w0, r=4, alpha=8.0, rslora=True)
    assert isinstance(layer, LoRALinear) and layer.scaling == 8.0 / 2
    assert population_loss(layer, dw) == pytest.approx(1.0, rel=1e-5)  # B = 0: dW = 0
    same = teacher_student_layer(w0, r=8, alpha=8.0, rslora=False)
    assert torch.equal(same.lora_A[:4], layer.lora_A)  # one seed: every rank starts from the same rows of A
    with pytest.raises(ValueError, match="d must be"):
        teacher_student_task(d=0)


def test_teacher_student_run():
    w0, dw = teacher_student_task(d=32)
    out = teacher_student_run(w0, dw, r=4, rslora=False, lr=1e-2, steps=20, record_at=(10, 20))
    assert set(out) == {"loss", "loss_at", "dW", "grad_B"}
    assert out["loss_at"][20] == out["loss"] < out["loss_at"][10] < 1.0
    assert out == teacher_student_run(w0, dw, r=4, rslora=False, lr=1e-2, steps=20, record_at=(10, 20))
    diverged = teacher_student_run(w0, dw, r=4, rslora=False, lr=1e6, steps=5)
    assert diverged["loss"] > 1.0  # a huge lr does not learn (inf when it overflows)
    with pytest.raises(ValueError, match="record_at must hold steps"):
        teacher_student_run(w0, dw, 4, False, 1e-3, steps=5, record_at=(6,))
    with pytest.raises(ValueError, match="lr must be"):
        teacher_student_run(w0, dw, 4, False, -1.0)


@pytest.mark.parametrize("name", ["nb00_tour"])
def test_stored_course_results_are_well_formed(name):
    stored = load_results(name)
    records = stored["results"]["records"]
    seeds = {rec["config"]["seed"] for rec in records}
    assert len(seeds) >= 3 and stored["provenance"]["seeds"] == sorted(seeds)
    for rec in records:
        RunConfig(**rec["config"])  # every stored config is valid
        assert rec["eval_steps"][0] == 0 and rec["eval_steps"][-1] == rec["config"]["steps"]
        assert len(rec["train_loss"]) == rec["config"]["steps"]


def test_steps_by_seed_and_describe_steps():
    from lorakit.sweeps import describe_steps, steps_by_seed

    records = [fake(lr=1e-3, seed=s) for s in (0, 1)] + [fake(lr=1e-2, seed=0, em=(0, 0, 0))]
    table = steps_by_seed(records)
    assert table == {"lora r=8": {1e-3: {0: 50, 1: 50}, 1e-2: {0: None}}}
    assert describe_steps({0: 200, 1: None, 2: 175}, cap=500) == "200 [175->500]"
    assert describe_steps({0: None, 1: None, 2: 5}) == "never [5-never]"
    with pytest.raises(ValueError, match="must not be empty"):
        describe_steps({})


def test_plot_seed_curves():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lorakit.sweeps import plot_seed_curves

    fig, ax = plt.subplots()
    records = [fake(seed=0), fake(seed=1, em=(0.0, None, 1.0))]
    plot_seed_curves(ax, records, label="lora")
    lines = ax.get_lines()
    assert len(lines) == 3 and lines[-1].get_label() == "lora"
    assert list(lines[-1].get_ydata()) == [0.0, 0.5, 1.0]  # the None is left out of the mean
    with pytest.raises(ValueError, match="share their evaluated steps"):
        plot_seed_curves(ax, [fake(), {**fake(), "eval_steps": [0, 10, 20]}])
    with pytest.raises(ValueError, match="must not be empty"):
        plot_seed_curves(ax, [])
    plt.close(fig)


def test_final_value_and_max_rebound():
    from lorakit.sweeps import final_value, max_rebound

    rec = fake()
    assert final_value(rec) == 0.1 and final_value(rec, "copy", "exact_match") == 0.2
    assert max_rebound({"train_loss": [3.0, 2.0, 1.0, 0.5]}) == 0.0
    assert max_rebound({"train_loss": [3.0, 1.0, 2.5, 0.5, 0.7]}) == pytest.approx(1.5)
    assert max_rebound({"train_loss": [3.0, None]}) == math.inf
