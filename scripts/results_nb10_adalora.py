"""Notebook 10's stored results: AdaLoRA (with and without its regulariser) vs LoRA r=2, over seeds and lrs.

    python scripts/results_nb10_adalora.py           # writes data/results/nb10_adalora.json
    python scripts/results_nb10_adalora.py --quick   # a smoke test written to a temporary folder

The notebook's AdaLoRA set-up (14 linear layers, r 12 -> 2, cubic budget over 300 steps with t_init=50,
t_final=100, deltaT=10, alpha=24, orthogonality weight 0.5) and LoRA r=2, alpha=4 (the closest final
adapter size), both for 300 AdamW steps of the course task with the same minibatches: AdaLoRA and LoRA at
lr 1e-3, 3e-3 and 1e-2, AdaLoRA without the regulariser (weight 0) at lr 3e-3, every configuration with
seeds 0, 1, 2. Stored: held-out exact-match every 25 steps and the first step with exact-match >= 0.9
(`lorakit.results.steps_to_threshold`), the final ranks per matrix, the number of non-zero singular values
after every step, and the orthogonality errors of P and Q.

One CPU thread by default (`--threads`): the numbers are the same bit for bit as with two.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from lorakit import LoRAConfig, apply_lora, seed_everything
from lorakit.adalora import AdaLoRAConfig, apply_adalora, effective_parameters, rank_report, train_adalora
from lorakit.data import caesar_task
from lorakit.models import load_tiny_lm
from lorakit.results import Timer, save_results, spread, steps_to_threshold
from lorakit.training import train

NAME = "nb10_adalora"
CFG = dict(init_r=12, target_r=2, tinit=50, tfinal=100, deltaT=10, total_step=300, alpha=24,
           target_modules="all-linear")
LRS = (1e-3, 3e-3, 1e-2)
NO_REG_LR = 3e-3
SEEDS = (0, 1, 2)
EVAL_EVERY, THRESHOLD = 25, 0.9


def record(arm: str, lr: float, seed: int, history) -> dict:
    em = [m["exact_match"] for m in history.eval_metrics]
    return {"arm": arm, "lr": lr, "seed": seed, "eval_steps": history.eval_steps, "exact_match": em,
            "heldout_loss": [round(m["loss"], 6) for m in history.eval_metrics],
            "steps_to_threshold": steps_to_threshold(history.eval_steps, em, THRESHOLD)}


def run_adalora(lr: float, seed: int, orth: float, cfg: dict, data) -> dict:
    train_data, heldout = data
    seed_everything(seed)
    model = apply_adalora(load_tiny_lm(), AdaLoRAConfig(**cfg, orth_reg_weight=orth))
    history = train_adalora(model, train_data, lr=lr, seed=seed, orth_reg_weight=orth, eval_data=heldout,
                            eval_every=EVAL_EVERY)
    out = record(f"AdaLoRA w_orth={orth}", lr, seed, history)
    out.update({"ranks": rank_report(model), "final_parameters": effective_parameters(model),
                "total_rank": history.total_rank, "budget": history.budget,
                "orth_p": [round(v, 5) for v in history.orth_p], "orth_q": [round(v, 5) for v in history.orth_q]})
    return out


def run_lora(lr: float, seed: int, steps: int, data) -> dict:
    train_data, heldout = data
    seed_everything(seed)
    model = apply_lora(load_tiny_lm(), LoRAConfig(r=2, alpha=4, target_modules="all-linear"))
    history = train(model, train_data, steps=steps, lr=lr, seed=seed, eval_data=heldout, eval_every=EVAL_EVERY)
    return record("LoRA r=2", lr, seed, history)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few short runs, written to a temporary folder")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = caesar_task()
    cfg, lrs, seeds, directory = CFG, LRS, SEEDS, None
    if args.quick:
        cfg = {**CFG, "tinit": 5, "tfinal": 5, "deltaT": 2, "total_step": 30}
        lrs, seeds, directory = (NO_REG_LR,), (0,), Path(tempfile.mkdtemp())
    grid = ([("ada", lr, s, 0.5) for lr in lrs for s in seeds] + [("ada", NO_REG_LR, s, 0.0) for s in seeds]
            + [("lora", lr, s, None) for lr in lrs for s in seeds])
    runs = []
    with Timer() as timer:
        for i, (kind, lr, seed, orth) in enumerate(grid):
            if kind == "ada":
                rec = run_adalora(lr, seed, orth, cfg, data)
            else:
                rec = run_lora(lr, seed, cfg["total_step"], data)
            runs.append(rec)
            print(f"[{i + 1}/{len(grid)}] {rec['arm']:<20} lr {lr:.0e} seed {seed}: steps to {THRESHOLD} = "
                  f"{rec['steps_to_threshold']}, final exact-match {rec['exact_match'][-1]:.3f}", flush=True)
    summary = {}
    for rec in runs:
        summary.setdefault(rec["arm"], {}).setdefault(str(rec["lr"]), []).append(rec)
    summary = {arm: {lr: {"steps_to_threshold": [r["steps_to_threshold"] for r in rs],
                          "final_exact_match": spread([r["exact_match"][-1] for r in rs])}
                     for lr, rs in by_lr.items()} for arm, by_lr in summary.items()}
    results = {
        "config": {"adalora": cfg, "orth_reg_weight": 0.5, "no_reg_lr": NO_REG_LR, "lora": {"r": 2, "alpha": 4},
                   "lrs": list(lrs), "seeds": list(seeds), "eval_every": EVAL_EVERY, "threshold": THRESHOLD},
        "runs": runs, "summary": summary,
    }
    path = save_results(NAME, results, seeds=seeds, wall_seconds=timer.seconds, directory=directory)
    print(f"wrote {path} ({timer.seconds:.0f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
