"""Notebook 09's stored results: full fine-tuning, LoRA and DoRA with the weights read as they train.

    python scripts/results_nb09_dora.py           # writes data/results/nb09_dora.json (make results)
    python scripts/results_nb09_dora.py --quick   # a smoke test (9 short runs) written to a temporary folder

All runs: the shipped tiny pretrained LM, the Caesar task (`lorakit.data.caesar_task`: 512 training words, 256
held-out words), AdamW, batches of 64, 300 steps, held-out Caesar evaluated at step 0 and every 25 steps
(`lorakit.sweeps.dora_runs.tracked_run`). At steps 25, 50, 100, 200 and 300 the DoRA paper's (ΔM, ΔD) of every
one of the 14 linear matrices is recorded.

* Full fine-tuning (every parameter), lr 1e-3, seeds 0, 1, 2: the singular values of every ΔW at every checkpoint,
  and held-out exact-match with every ΔW replaced by its best rank-k approximation (k = 0, 1, 2, 4, 8, 16, 32, 64).
* LoRA and DoRA r = 8 (alpha = 16, all linear layers) at lr 1e-3 and 3e-3, seeds 0, 1, 2 (singular values of every
  ΔW at step 300); each method's best lr (fewest median steps to held-out exact-match >= 0.9 over the seeds, ties
  to the lower final loss) is then used for r = 1, 2, 4 (alpha = 2r), seeds 0, 1, 2; and r = 2 is also run at the
  other lr on seed 0 (does the r = 8 lr still hold at low rank?).

One CPU thread by default (`--threads`): the numbers are the same bit for bit as with two.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import torch

from lorakit.analysis import effective_weights
from lorakit.data import caesar_task
from lorakit.results import Timer, save_results
from lorakit.sweeps.dora_runs import (
    TrackedRun,
    arm_label,
    best_lrs,
    build_tracked_model,
    tracked_run,
    truncated_update_scores,
)

NAME = "nb09_dora"
STEPS = 300
CHECKPOINTS = (25, 50, 100, 200, 300)
RANKS = (1, 2, 4)  # after r = 8
LRS = (1e-3, 3e-3)
CHECK_RANK = 2  # also run at the other lr (seed 0)
SEEDS = (0, 1, 2)
FULL_LR = 1e-3
TRUNCATION_RANKS = (0, 1, 2, 4, 8, 16, 32, 64)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="nine 50-step runs, written to a temporary folder")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--log", default=None, help="append every record to this JSON-lines file as it finishes")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = caesar_task()
    steps, checkpoints, ranks, lrs, seeds = STEPS, CHECKPOINTS, RANKS, LRS, SEEDS
    directory = None
    if args.quick:
        steps, checkpoints, ranks, lrs, seeds = 50, (25, 50), (2,), (1e-3, 3e-3), (0,)
        directory = Path(tempfile.mkdtemp())
    base = TrackedRun(steps=steps, checkpoints=checkpoints)
    records: list[dict] = []

    def log(rec: dict) -> None:
        records.append(rec)
        c = rec["config"]
        print(f"[{len(records)}] {arm_label(rec):<9} lr {c['lr']:.0e} seed {c['seed']}: steps to 0.9 = "
              f"{rec['steps_to_threshold']}, final exact-match {rec['exact_match'][-1]:.3f}", flush=True)
        if args.log:
            with open(args.log, "a") as fh:
                fh.write(json.dumps(rec) + "\n")

    truncation = {}
    with Timer() as timer:
        for seed in seeds:  # full fine-tuning: the update's spectrum, and what a rank-k cut of it keeps
            run = dataclasses.replace(base, method="full", lr=FULL_LR, seed=seed, spectra=checkpoints)
            before = effective_weights(build_tracked_model(run))
            model, rec = tracked_run(run, data)
            log(rec)
            truncation[str(seed)] = {str(k): v for k, v in
                                     truncated_update_scores(model, before, data[1], TRUNCATION_RANKS).items()}

        def lora_run(method: str, r: int, lr: float, seed: int) -> TrackedRun:
            return dataclasses.replace(base, method=method, r=r, lr=lr, seed=seed,
                                       spectra=(steps,) if r == 8 else ())

        for method in ("lora", "dora"):  # r = 8 at every lr and seed: each method's best lr
            for lr in lrs:
                for seed in seeds:
                    log(tracked_run(lora_run(method, 8, lr, seed), data)[1])
        best = best_lrs([rec for rec in records if rec["config"]["method"] != "full"])
        for method in ("lora", "dora"):  # the lower ranks at that lr
            lr = best[arm_label({"config": {"method": method, "r": 8}})]
            for r in ranks:
                for seed in seeds:
                    log(tracked_run(lora_run(method, r, lr, seed), data)[1])
        for method in ("lora", "dora"):  # the other lr at r = CHECK_RANK, first seed
            lr = best[arm_label({"config": {"method": method, "r": 8}})]
            for other in lrs:
                if other != lr and CHECK_RANK in ranks:
                    log(tracked_run(lora_run(method, CHECK_RANK, other, seeds[0]), data)[1])
    results = {
        "config": {"steps": steps, "checkpoints": list(checkpoints), "ranks": [8, *ranks], "lrs": list(lrs),
                   "check_rank": CHECK_RANK,
                   "seeds": list(seeds), "full_lr": FULL_LR, "eval_every": base.eval_every, "threshold": 0.9,
                   "truncation_ranks": list(TRUNCATION_RANKS), "alpha": "2r", "target_modules": "all-linear",
                   "data": {"n_train": len(data[0]), "n_heldout": len(data[1])}},
        "best_lr_r8": best,
        "records": records,
        "truncation": truncation,
    }
    path = save_results(NAME, results, seeds=seeds, wall_seconds=timer.seconds, directory=directory)
    print(f"{len(records)} runs in {timer.seconds:.0f} s -> {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
