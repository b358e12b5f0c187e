"""Notebook 03's stored results: the one-layer rank sweep with the learning rate tuned, for both scalings.

    python scripts/results_nb03_lr_sweep.py            # writes data/results/nb03_lr_sweep.json (make results)
    python scripts/results_nb03_lr_sweep.py --quick    # a small smoke test written to a temporary folder

The task is `lorakit.sweeps.teacher_student` (a frozen 256 x 256 layer learns a full-rank update): ranks
r = 1, 4, 16, 64, 256, both scalings (alpha/r and rsLoRA's alpha/sqrt(r), alpha = 8), eight Adam learning rates
from 1e-4 to 2e-2 (2e-4 is the notebook's original single lr), seeds 0, 1, 2 (a seed fixes the adapter's A and
the data stream), 500 steps. For each run it stores the population loss ||dW - dW*||_F^2 after 50, 100, 200 and
500 steps, the final ||dW||_F and ||dL/dB||_F averaged over the first 10 steps. A diverged run stores null. One
CPU thread (`--threads N` to change); the numbers are the same bit for bit with the notebooks' two threads.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lorakit.results import Timer, save_results
from lorakit.sweeps import best_rank_r_loss, teacher_student_run, teacher_student_task

NAME = "nb03_lr_sweep"
RANKS = (1, 4, 16, 64, 256)
LRS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2)
SEEDS = (0, 1, 2)
STEPS, RECORD_AT, ALPHA = 500, (50, 100, 200, 500), 8.0


def finite(x: float) -> float | None:
    return round(x, 7) if math.isfinite(x) else None


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 ranks x 3 lrs x 1 seed, 100 steps, to a temp folder")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ranks, lrs, seeds, steps, record_at = RANKS, LRS, SEEDS, STEPS, RECORD_AT
    if args.quick:
        ranks, lrs, seeds, steps, record_at = (1, 16, 256), (2e-4, 1e-3, 5e-3), (0,), 100, (50, 100)
    w0, dw_star = teacher_student_task()
    runs = []
    with Timer() as timer:
        for r in tqdm(ranks, desc="ranks"):
            for rslora in (False, True):
                for lr in lrs:
                    for seed in seeds:
                        out = teacher_student_run(w0, dw_star, r, rslora, lr, steps=steps, alpha=ALPHA, seed=seed,
                                                  record_at=record_at)
                        runs.append({"r": r, "rslora": rslora, "lr": lr, "seed": seed,
                                     "loss_at": {str(s): finite(out["loss_at"][s]) for s in record_at},
                                     "dW": finite(out["dW"]), "grad_B": finite(out["grad_B"])})
    results = {
        "task": {"d": int(w0.shape[0]), "decay": 0.5, "alpha": ALPHA, "batch": 64, "steps": steps,
                 "record_at": list(record_at), "ranks": list(ranks), "lrs": list(lrs),
                 "best_rank_r": {str(r): round(best_rank_r_loss(dw_star, r), 7) for r in ranks}},
        "runs": runs,
    }
    directory = Path(tempfile.mkdtemp()) if args.quick else None
    path = save_results(NAME, results, seeds=seeds, wall_seconds=timer.seconds, directory=directory)
    print(f"{len(runs)} runs in {timer.seconds:.0f} s -> {path}")
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
