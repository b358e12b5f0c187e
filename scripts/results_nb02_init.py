"""Notebook 02's stored results: what the B = 0 start buys, measured over seeds and learning rates.

    python scripts/results_nb02_init.py            # writes data/results/nb02_init.json (make results)
    python scripts/results_nb02_init.py --quick    # a 2-run smoke test written to a temporary folder

Four starts of LoRA r=8, alpha=16 on all linear layers (`lorakit.sweeps.STARTS`): the two with B = 0 ("kaiming",
PEFT's default, and "gaussian", PEFT's alternative) and the two with a random B ("zero_A_random_B" and
"random_A_random_B"; B drawn like a Kaiming layer of fan-in r). Learning rates 1e-3, 3e-3 (notebook 02's) and
1e-2; seeds 0, 1, 2 (a seed sets the random factors and the minibatch order); 300 steps of AdamW on batches of 64
from 512 training words (`lorakit.sweeps.finetune`). Held-out Caesar and the two pretraining tasks, copy and
rot1, are evaluated on 256 words at step 0 and every 25 steps, so the notebook reads the damage at step 0, the
forgetting along the run, the loss spikes (per-step training loss) and the steps to Caesar exact-match >= 0.9.
"""

from __future__ import annotations

import sys

from lorakit.sweeps import RunConfig, course_tasks, run_sweep_script

NAME = "nb02_init"
STARTS = ("kaiming", "gaussian", "zero_A_random_B", "random_A_random_B")
LRS = (1e-3, 3e-3, 1e-2)
SEEDS = (0, 1, 2)
STEPS = 300

CONFIGS = [RunConfig(method="lora", r=8, alpha=16, start=start, lr=lr, seed=seed, steps=STEPS, eval_every=25)
           for start in STARTS for lr in LRS for seed in SEEDS]

if __name__ == "__main__":
    run_sweep_script(NAME, CONFIGS, course_tasks(n_train=512, n_eval=256), sys.argv[1:], description=__doc__)
