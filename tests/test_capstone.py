"""The capstone package (notebook 11): lexicon, splits, human ceiling, model, arms, one run, analyses, script."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from builders import load_script
from torch import nn

from lorakit.capstone import (
    ARMS,
    CapstoneConfig,
    Lexicon,
    ValenceModel,
    arms_for,
    capstone_data,
    human_ceiling,
    lexicon_splits,
    load_lexicon,
    pearson,
    run_arm,
    targets_regex,
)
from lorakit.capstone.analyses import amplification, best_lr, md_points, mean_spread, spectrum_summary, subspace_grid
from lorakit.capstone.arms import LINEAR_TARGETS, TARGET_SETS, lora_qv_peft_init
from lorakit.capstone.lexicon import LEXICON_PATH, published_mean_mismatches
from lorakit.capstone.model import by_length, encode_tokens, mean_pool

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lexicon():
    return load_lexicon()


@pytest.fixture(scope="module")
def small_data(lexicon):
    small = lexicon.subset(torch.arange(0, 7520, 47))  # 160 tokens spread over the file
    return capstone_data(lexicon_splits(small, fractions=(0.6, 0.2, 0.2)))


def test_lexicon_is_the_published_one(lexicon):
    assert len(lexicon) == 7520 and lexicon.ratings.shape == (7520, 10)
    assert lexicon.ratings.min() >= -4 and lexicon.ratings.max() <= 4
    assert torch.equal(lexicon.mean, lexicon.ratings.mean(1))
    assert published_mean_mismatches(lexicon) == 1  # one row's published mean is not its ratings' mean
    i = lexicon.tokens.index("foolishest")
    assert lexicon.ratings[i].tolist() == [-2, 1, -2, -3, -2, -2, -1, 1, -2, -2]


def test_shipped_lexicon_matches_the_package():
    pytest.importorskip("vaderSentiment")
    out = subprocess.run([sys.executable, "scripts/prepare_vader_lexicon.py", "--check"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_prepare_script_names_the_missing_package(monkeypatch):
    prepare_vader_lexicon = load_script("prepare_vader_lexicon.py")
    monkeypatch.setitem(sys.modules, "vaderSentiment", None)
    with pytest.raises(SystemExit, match="pip install vaderSentiment"):
        prepare_vader_lexicon.package_lexicon()


def test_bad_lexicon_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare_vader_lexicon"):
        load_lexicon(tmp_path / "missing.tsv")
    bad = tmp_path / "bad.tsv"
    bad.write_text("hello\n")
    with pytest.raises(ValueError, match="header"):
        load_lexicon(bad)
    header = LEXICON_PATH.read_text().splitlines()[0]
    bad.write_text(header + "\nword\t1.0\t0.5\t1\t1\n")
    with pytest.raises(ValueError, match=":2: expected 13"):
        load_lexicon(bad)
    bad.write_text(header + "\nword\t1.0\t0.5\t" + "\t".join(["9"] * 10) + "\n")
    with pytest.raises(ValueError, match="-4..4"):
        load_lexicon(bad)


def test_splits_are_disjoint_fixed_and_checked(lexicon):
    s = lexicon_splits(lexicon)
    assert (len(s.train), len(s.val), len(s.test)) == (5264, 752, 1504)
    assert sorted(s.train.tokens + s.val.tokens + s.test.tokens) == sorted(lexicon.tokens)  # a partition of rows
    assert len(set(lexicon.tokens)) == 7506  # 14 emoticons/slang entries appear twice, rated separately
    assert len(set(s.test.tokens) & set(s.train.tokens)) == 1
    assert lexicon_splits(lexicon).test.tokens == s.test.tokens
    assert lexicon_splits(lexicon, seed=1).test.tokens != s.test.tokens
    for bad in ((0.5, 0.5), (0.5, 0.3, 0.3), (1.0, 0.0, 0.0), "abc"):
        with pytest.raises(ValueError, match="fractions"):
            lexicon_splits(lexicon, fractions=bad)
    with pytest.raises(ValueError, match="seed"):
        lexicon_splits(lexicon, seed=-1)
    with pytest.raises(TypeError, match="lexicon"):
        lexicon_splits("words")


def _synthetic(ratings: torch.Tensor) -> Lexicon:
    return Lexicon(tuple(f"w{i}" for i in range(len(ratings))), ratings, ratings.mean(1), ratings.mean(1))


def test_human_ceiling_extremes_and_the_real_value(lexicon):
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(500, 1, generator=g, dtype=torch.float64)
    same = human_ceiling(_synthetic(truth.expand(500, 10).clone()), n_splits=5)
    assert same["r_half"] == pytest.approx(1.0) and same["ceiling"] == pytest.approx(1.0)
    noise = human_ceiling(_synthetic(torch.randn(500, 10, generator=g, dtype=torch.float64)), n_splits=20)
    assert abs(noise["r_half"]) < 0.15
    real = human_ceiling(lexicon, n_splits=20)
    assert 0.9 < real["r_half"] < real["reliability"] < real["ceiling"] < 1
    assert real["one_vs_rest"] < real["r_half"]  # one rater agrees less with the panel than five do
    with pytest.raises(ValueError, match="n_splits"):
        human_ceiling(lexicon, n_splits=0)
    with pytest.raises(ValueError, match="pearson"):
        pearson(torch.ones(5), torch.arange(5.0))
    with pytest.raises(ValueError, match="1-D"):
        pearson(torch.ones(5), torch.ones(4))


def test_mean_pool_ignores_padding_and_by_length_sorts():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert mean_pool(hidden, torch.tensor([[1, 1, 0]])).item() == 2.0
    from lorakit.models import load_minilm_tokenizer

    lex = _synthetic(torch.zeros(3, 10, dtype=torch.float64))
    lex = Lexicon(("a", "unbelievably", ":-)"), lex.ratings, lex.mean, lex.mean)
    enc = encode_tokens(load_minilm_tokenizer(), lex)
    lengths = by_length(enc).attention_mask.sum(1).tolist()
    assert lengths == sorted(lengths) and sorted(enc.attention_mask.sum(1).tolist()) == lengths
    with pytest.raises(TypeError, match="tokenizer"):
        encode_tokens("not a tokenizer", lex)
    with pytest.raises(TypeError, match="head"):
        ValenceModel(nn.Identity(), nn.Linear(4, 2))


def test_targets_select_the_intended_minilm_layers():
    import re

    from lorakit.models import load_minilm

    names = [n for n, m in load_minilm().named_modules() if isinstance(m, nn.Linear)]
    picked = [n for n in names if re.fullmatch(targets_regex(LINEAR_TARGETS), n)]
    assert len(picked) == 36 and not any("pooler" in n for n in picked)
    for kind in TARGET_SETS:
        chosen = [n for n in names if re.fullmatch(targets_regex((kind,)), n)]
        assert len(chosen) == 6, kind
    down = [n for n in names if re.fullmatch(targets_regex(("down",)), n)]
    assert all(n.endswith(".output.dense") and "attention" not in n for n in down)
    with pytest.raises(ValueError, match="kinds"):
        targets_regex(("q", "ffn"))
    with pytest.raises(ValueError, match="steps"):
        arms_for(5)


def test_run_arm_records_everything_and_is_deterministic(small_data):
    cfg = CapstoneConfig("lora_qv", lr=3e-3, steps=20, batch_size=8, eval_every=10)
    _, a = run_arm(cfg, small_data)
    _, b = run_arm(cfg, small_data)
    assert a["train_loss"] == b["train_loss"] and a["test"] == b["test"]
    assert a["trainable"] == 6 * 2 * 8 * (384 + 384) + 385
    assert a["val_steps"] == [10, 20] and len(a["train_loss"]) == 20
    assert a["memory_bytes"] > 4 * a["total"]  # at least the fp32 weights
    assert -1 <= a["test"]["pearson"] <= 1 and 0 < a["drift"] <= 1
    probe = run_arm(CapstoneConfig("probe", lr=1e-2, steps=20, batch_size=8), small_data)[1]
    assert probe["trainable"] == 385 and probe["drift"] == pytest.approx(1.0)


def test_run_arm_rejects_bad_input(small_data):
    for kwargs, message in (({"lr": 0}, "lr"), ({"lr": float("nan")}, "lr"), ({"steps": 0}, "steps"),
                            ({"seed": -1}, "seed"), ({"batch_size": True}, "batch_size"), ({"arm": ""}, "arm")):
        args = {"arm": "lora_qv", "lr": 1e-3, **kwargs}
        with pytest.raises(ValueError, match=message):
            CapstoneConfig(**args)
    with pytest.raises(ValueError, match="arm must be one of"):
        run_arm(CapstoneConfig("nope", lr=1e-3, steps=20), small_data)
    with pytest.raises(ValueError, match="named cfg.arm"):
        run_arm(CapstoneConfig("probe", lr=1e-3, steps=20), small_data, arm=ARMS["full"])
    with pytest.raises(TypeError, match="data"):
        run_arm(CapstoneConfig("probe", lr=1e-3, steps=20), "data")


def test_peft_order_init_gives_peft_initial_factors():
    peft = pytest.importorskip("peft")
    from lorakit.models import load_minilm
    from lorakit.peft import lora_layers

    torch.manual_seed(3)
    theirs = peft.get_peft_model(load_minilm(), peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"]))
    torch.manual_seed(3)
    ours = lora_qv_peft_init(load_minilm())
    a_theirs = {n.removeprefix("base_model.model.").removesuffix(".lora_A.default.weight"): p
                for n, p in theirs.named_parameters() if "lora_A" in n}
    layers = lora_layers(ours)
    assert set(a_theirs) == set(layers)
    for name, layer in layers.items():
        assert torch.equal(layer.lora_A, a_theirs[name]) and not layer.lora_B.any()


def test_analyses_on_known_matrices():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 30, generator=g, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    top = s[0] * torch.outer(u[:, 0], vh[0])
    amp = amplification(top, w, 1)
    assert amp["projected"] == pytest.approx(s[0].item()) and amp["factor"] == pytest.approx(1.0)
    assert amp["w_top"] == pytest.approx(s[0].item()) and amp["random_projected"] < amp["w_top"]
    low = torch.outer(u[:, -1], vh[-1])  # the direction W uses least: amplified the most
    assert amplification(low, w, 1)["factor"] == pytest.approx(1 / s[-1].item())
    with pytest.raises(ValueError, match="r must be"):
        amplification(top, w, 0)
    a = torch.randn(8, 30, generator=g, dtype=torch.float64)
    grid = subspace_grid(a, torch.cat([a, torch.randn(8, 30, generator=g, dtype=torch.float64)]))
    assert len(grid) == 8 and len(grid[0]) == 16 and grid[7][15] == pytest.approx(1.0)  # rows of a lie in it
    assert all(row[i] == pytest.approx(1.0) for i, row in enumerate(subspace_grid(a, a)))
    spec = spectrum_summary(top, r=8)
    assert spec["rank_90"] == 1 and spec["energy_top8"] == pytest.approx(1.0) and spec["random_rank_90"] > 10
    w0 = {"x": w.float()}
    points = md_points({0: w0, 5: {"x": (w * 1.1).float()}, 10: {"x": (w + top).float()}})
    assert [p["step"] for p in points] == [5, 10]
    assert points[0]["dD"] == pytest.approx(0.0, abs=1e-6) and points[0]["dM"] > 0
    with pytest.raises(ValueError, match="reference step"):
        md_points({5: w0})
    assert mean_spread([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    recs = [{"config": {"arm": "x", "seed": 0, "lr": lr}, "val": [v]} for lr, v in ((1e-3, 0.5), (1e-2, 0.7))]
    assert best_lr(recs, "x") == 1e-2
    with pytest.raises(ValueError, match="no finished"):
        best_lr(recs, "y")


def test_script_rejects_bad_arguments():
    for args, message in ((["--jobs", "0"], "--jobs"), (["--steps", "5"], "--steps")):
        out = subprocess.run([sys.executable, "scripts/capstone.py", *args], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 2 and message in out.stderr


@pytest.mark.parametrize("name", ["capstone_main", "capstone_analyses"])
def test_stored_capstone_results_are_well_formed(name):
    path = ROOT / "data" / "results" / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"{path.name} not generated yet (make results)")
    stored = json.loads(path.read_text())
    assert {"command", "seeds", "versions", "machine", "wall_seconds"} <= set(stored["provenance"])
    records = stored["results"]["records"]
    for rec in records:
        CapstoneConfig(**rec["config"])
        assert len(rec["train_loss"]) == rec["config"]["steps"] and rec["test"]["pearson"] is not None
    if name == "capstone_main":
        for arm in ARMS:
            seeds = {r["config"]["seed"] for r in records if r["config"]["arm"] == arm}
            assert seeds == {0, 1, 2}, arm


def _rec(arm, lr, seed, pearson, stage="sweep", **extra):
    return {"config": {"arm": arm, "lr": lr, "seed": seed, "steps": 2, "batch_size": 32, "eval_every": 50},
            "label": arm, "trainable": 10, "memory_bytes": 2**20, "step_seconds": 0.5, "val": [pearson],
            "test": {"pearson": pearson, "rmse": 1.0}, "drift": 0.9, "train_loss": [1.0, 0.5], "stage": stage,
            "spec": extra.pop("spec", {}), **extra}


def test_report_tables_and_fits():
    from lorakit.capstone.report import (
        curve_gap,
        format_table,
        main_table,
        md_fits,
        rslora_best_lrs,
        seed_scores,
        stage_table,
    )

    records = [_rec("a", 1e-3, s, 0.5 + 0.01 * s) for s in (0, 1, 2)] + [_rec("a", 1e-2, 0, 0.1)]
    results = {"records": records, "best_lr": {"a": 1e-3}, "ceiling": {"test": {"ceiling": 0.9}}}
    (row,) = main_table(results)
    assert row["pearson"] == pytest.approx(0.51) and row["pearson_sd"] == pytest.approx(0.01)
    assert row["to_ceiling"] == pytest.approx(0.39) and row["memory_mb"] == 1.0 and row["step_ms"] == 500
    assert seed_scores(records, "a", 1e-3) == {0: 0.5, 1: 0.51, 2: 0.52}
    with pytest.raises(ValueError, match="capstone_main"):
        main_table({"records": []})
    with pytest.raises(ValueError, match="no runs"):
        main_table({**results, "best_lr": {"a": 3e-3}})
    table = stage_table(records, "sweep")
    assert table["a"]["n"] == 4
    with pytest.raises(ValueError, match="no records"):
        stage_table(records, "table5")
    assert curve_gap(records[0], _rec("a", 1e-3, 0, 0.5, train_loss=[1.0, 0.75])) == 0.25
    with pytest.raises(ValueError, match="steps"):
        curve_gap(records[0], _rec("a", 1e-3, 0, 0.5, train_loss=[1.0]))
    points = [{"step": s, "name": n, "dD": d, "dM": 2 * d} for s in (1, 2) for n, d in (("x", 0.1 * s), ("y", 0.3 * s))]
    assert md_fits({"md_points": points}).slope == pytest.approx(2.0)
    assert set(md_fits({"md_points": points}, per_step=True)) == {1, 2}
    with pytest.raises(ValueError, match="md_points"):
        md_fits({})
    rs = [_rec("rs", lr, 0, score, stage="rslora", spec={"r": 4, "rslora": flag})
          for lr, score, flag in ((1e-3, 0.5, False), (3e-3, 0.6, False), (1e-3, 0.7, True), (3e-3, 0.2, True))]
    assert rslora_best_lrs(rs) == {"alpha/r": {4: 3e-3}, "alpha/sqrt(r)": {4: 1e-3}}
    text = format_table([{"k": "a", "v": 1.23456}, {"k": "bb", "v": None}], [("k", "key", "s"), ("v", "value", ".2f")])
    assert text.splitlines() == ["key  value", "---  -----", "a     1.23", "bb       -"]
