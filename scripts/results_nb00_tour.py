"""Notebook 00's stored results: the tour's LoRA recipe over seeds and learning rates, on the pretrained base and
on a random base of the same architecture.

    python scripts/results_nb00_tour.py            # writes data/results/nb00_tour.json (make results)
    python scripts/results_nb00_tour.py --quick    # a 2-run smoke test written to a temporary folder

The recipe: LoRA r=8, alpha=16 on all linear layers, AdamW, batches of 64 from 512 training words
(`lorakit.sweeps.finetune`). Bases: the shipped pretrained model and an untrained one (random weights, frozen as
LoRA freezes the pretrained ones). Learning rates 1e-3, 3e-3 (the tour's) and 1e-2; seeds 0, 1, 2 (a seed sets the
adapter's initial A, the random base, and the minibatch order); 500 steps; held-out Caesar (and copy, rot1)
evaluated every 25 steps on 256 words, so that the notebook reports steps to exact-match >= 0.9 per seed.
"""

from __future__ import annotations

import sys

from lorakit.sweeps import RunConfig, course_tasks, run_sweep_script

NAME = "nb00_tour"
BASES = ("pretrained", "random")
LRS = (1e-3, 3e-3, 1e-2)
SEEDS = (0, 1, 2)
STEPS = 500

CONFIGS = [RunConfig(method="lora", r=8, alpha=16, base=base, lr=lr, seed=seed, steps=STEPS, eval_every=25)
           for base in BASES for lr in LRS for seed in SEEDS]

if __name__ == "__main__":
    run_sweep_script(NAME, CONFIGS, course_tasks(n_train=512, n_eval=256), sys.argv[1:], description=__doc__)
