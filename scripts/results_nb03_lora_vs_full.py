"""Notebook 03's stored results on the course model: LoRA against full fine-tuning, rank and over-fitting, the
learning rate of each, and weight decay on the adapter.

    python scripts/results_nb03_lora_vs_full.py            # writes data/results/nb03_lora_vs_full.json
    python scripts/results_nb03_lora_vs_full.py --quick    # a small smoke test written to a temporary folder

Three sweeps of `lorakit.sweeps.finetune` (AdamW, batches of 64; a seed fixes the adapter's A and the minibatch
order; LoRA on all linear layers with alpha = 2r, so the scaling alpha/r = 2 at every rank):

* ``compare``: 512 training words, 250 steps, evaluated every 25 steps on 256 held-out words for Caesar and for the
  two pretraining tasks (copy, rot1: forgetting). A learning-rate scan with seed 0: full fine-tuning at lr 3e-4,
  1e-3, 3e-3; LoRA r = 1, 8, 64 at lr 1e-3, 3e-3, 1e-2. Then seeds 1 and 2 at each arm's best lr of the scan
  (fewest steps to held-out exact-match 0.9, ties to the lower final loss: `lorakit.sweeps.best_lr`).
  (The scan uses one seed to fit the time budget; the comparison at the best lrs uses three.)
* ``weight_decay``: LoRA r = 8 at its best lr, AdamW weight decay 1 and 10 on the adapter (its only trainable
  parameters), seeds 0, 1, 2; weight decay 0 is the ``compare`` run.
* ``small_data``: 32 training words (a prefix of the 512), also evaluated on the training words themselves, 250
  steps, seeds 0, 1, 2: LoRA r = 1, 4, 16, 64 at lr 3e-3 and full fine-tuning at 1e-3 (generalisation gap
  against r).

One CPU thread (`--threads N` to change); the numbers are the same bit for bit with the notebooks' two threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lorakit.results import Timer, save_results
from lorakit.sweeps import CourseTasks, RunConfig, arm_of, best_lr, course_tasks, finetune

NAME = "nb03_lora_vs_full"
SEEDS = (0, 1, 2)
STEPS, EVAL_EVERY = 250, 25
FULL_LRS = (3e-4, 1e-3, 3e-3)
LORA_RANKS = (1, 8, 64)
LORA_LRS = (1e-3, 3e-3, 1e-2)
WD_RANK, WEIGHT_DECAYS = 8, (1.0, 10.0)
SMALL_N, SMALL_RANKS, SMALL_LR, SMALL_FULL_LR = 32, (1, 4, 16, 64), 3e-3, 1e-3


def lora(r: int, lr: float, seed: int, **kw: object) -> RunConfig:
    return RunConfig(method="lora", r=r, alpha=2 * r, lr=lr, seed=seed, steps=STEPS, eval_every=EVAL_EVERY, **kw)


def full(lr: float, seed: int) -> RunConfig:
    return RunConfig(method="full", lr=lr, seed=seed, steps=STEPS, eval_every=EVAL_EVERY)


#: the learning-rate scan (seed 0)
SCAN = [full(lr, 0) for lr in FULL_LRS] + [lora(r, lr, 0) for r in LORA_RANKS for lr in LORA_LRS]
SMALL = [lora(r, SMALL_LR, s) for r in SMALL_RANKS for s in SEEDS] + [full(SMALL_FULL_LR, s) for s in SEEDS]


def at_best(scan: list[dict], seeds: tuple[int, ...]) -> list[RunConfig]:
    """Each arm of the scan again at its best lr, with ``seeds``."""
    best = best_lr(scan)
    out = []
    for rec in scan:
        c = RunConfig(**rec["config"])
        if c.lr == best[arm_of(rec)]:
            out += [dataclasses.replace(c, seed=s) for s in seeds]
    return out


def wd_configs(lr: float) -> list[RunConfig]:
    return [lora(WD_RANK, lr, s, weight_decay=wd) for wd in WEIGHT_DECAYS for s in SEEDS]


def run(configs: list[RunConfig], tasks: CourseTasks, desc: str) -> list[dict]:
    return [finetune(cfg, tasks)[1] for cfg in tqdm(configs, desc=desc)]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few configs, 50 steps, written to a temporary folder")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    scan, small, seeds = SCAN, SMALL, SEEDS
    if args.quick:
        scan = [dataclasses.replace(c, steps=50) for c in (full(1e-3, 0), lora(WD_RANK, 3e-3, 0))]
        small, seeds = [dataclasses.replace(c, steps=50) for c in SMALL[:1]], (0, 1)
    big, little = course_tasks(n_train=512, n_eval=256), course_tasks(n_train=SMALL_N, n_eval=256, eval_train=True)
    with Timer() as timer:
        compare_records = run(scan, big, "lr scan")
        best = best_lr(compare_records)
        compare_records += run(at_best(compare_records, seeds[1:]), big, "seeds at best lr")
        wd_lr = best[f"lora r={WD_RANK}"]
        wd = [dataclasses.replace(c, steps=scan[-1].steps) for c in wd_configs(wd_lr)]
        if args.quick:
            wd = wd[:1]
        wd_records = run(wd, big, "weight_decay")
        small_records = run(small, little, "small_data")
    results = {"compare": compare_records, "weight_decay": wd_records, "small_data": small_records,
               "settings": {"best_lr_scan": best, "scan_seed": 0, "wd_rank": WD_RANK, "wd_lr": wd_lr,
                            "small_n_train": SMALL_N}}
    directory = Path(tempfile.mkdtemp()) if args.quick else None
    path = save_results(NAME, results, seeds=SEEDS, wall_seconds=timer.seconds, directory=directory)
    n = len(compare_records) + len(wd_records) + len(small_records)
    print(f"{n} runs in {timer.seconds:.0f} s -> {path}")
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
