"""Seeded fine-tuning experiments, run the same way by the notebooks (a live slice) and by ``scripts/`` (the sweep).

The notebooks' experimental claims ("the default start learns Caesar within N steps", "LoRA forgets less than full
fine-tuning", "LoRA's best learning rate is k times full fine-tuning's", "alpha/r needs a different lr at every
rank") are measured here, so that a script (many seeds and learning rates, stored with provenance in
``data/results`` by :func:`lorakit.results.save_results`) and a notebook (one seed or one arm, re-run live)
compute the very same numbers, and the notebook can assert that they agree.

* :mod:`~lorakit.sweeps.course`: the course model on the Caesar task (notebooks 00-03): :func:`course_tasks`,
  :class:`RunConfig`, :func:`build_model`, :func:`finetune`, :func:`sweep`;
* :mod:`~lorakit.sweeps.records`: reading a sweep: :func:`steps_to` (steps to a threshold: the task has a phase
  transition), :func:`value_at`, :func:`arm_of`, :func:`select`, :func:`per_seed`, :func:`lr_table`,
  :func:`best_lr` (each arm at its own best learning rate);
* :mod:`~lorakit.sweeps.forgetting`: what a run lost and how it generalised (notebook 03, section 6):
  :func:`forgetting` (drop of a pretrained task from its step-0 value), :func:`tradeoff`, :func:`generalisation_gap`;
* :mod:`~lorakit.sweeps.plots`: every seed as a faint line and their mean (:func:`plot_seed_curves`);
* :mod:`~lorakit.sweeps.store`: the command line of the `scripts/results_nb0*` sweeps (run, time, store);
* :mod:`~lorakit.sweeps.teacher_student`: notebook 03's one-layer task with a full-rank target, for rank x
  scaling x learning-rate sweeps that take milliseconds per run.
"""

from lorakit.sweeps.course import (
    METHODS,
    METRICS,
    STARTS,
    CourseTasks,
    RunConfig,
    build_model,
    course_tasks,
    finetune,
    sweep,
)
from lorakit.sweeps.forgetting import forgetting, generalisation_gap, tradeoff
from lorakit.sweeps.plots import plot_seed_curves
from lorakit.sweeps.records import (
    arm_of,
    best_lr,
    describe_steps,
    final_value,
    lr_table,
    max_rebound,
    per_seed,
    select,
    steps_by_seed,
    steps_to,
    value_at,
)
from lorakit.sweeps.store import run_sweep_script
from lorakit.sweeps.teacher_student import (
    best_rank_r_loss,
    population_loss,
    teacher_student_layer,
    teacher_student_run,
    teacher_student_task,
)

__all__ = [
    "CourseTasks", "METHODS", "METRICS", "RunConfig", "STARTS", "arm_of", "best_lr", "best_rank_r_loss",
    "build_model", "course_tasks", "describe_steps", "final_value", "finetune", "forgetting", "generalisation_gap",
    "lr_table", "max_rebound", "per_seed", "plot_seed_curves", "population_loss", "run_sweep_script", "select",
    "steps_by_seed", "steps_to", "sweep", "teacher_student_layer", "teacher_student_run", "teacher_student_task",
    "tradeoff", "value_at",
]
