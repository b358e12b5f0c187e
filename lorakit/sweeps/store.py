"""The command line shared by the ``scripts/results_nb0*_*.py`` sweeps: run, time, store with provenance.

``python scripts/results_nb00_tour.py`` runs every config and writes ``data/results/<name>.json`` through
:func:`lorakit.results.save_results` (command, seeds, versions, machine, wall time recorded); ``--quick`` runs
the first two configs for 50 steps into a temporary folder (a smoke test); ``--threads N`` sets torch's CPU
threads (default 1: the tiny model gains little from more, a shared machine runs it faster, and the numbers are
the same bit for bit as with the notebooks' two threads).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lorakit.results import Timer, save_results
from lorakit.sweeps.course import CourseTasks, RunConfig, finetune

__all__ = ["run_sweep_script"]


def run_sweep_script(name: str, configs: Sequence[RunConfig], tasks: CourseTasks | Sequence[CourseTasks],
                     argv: Sequence[str] | None = None, description: str = "", extra: dict | None = None) -> Path:
    """Parse ``argv`` (``--quick``, ``--threads``), run ``configs`` on ``tasks``, save ``{"records", **extra}``.

    ``tasks`` is one :class:`CourseTasks` for every config, or one per config (e.g. two training-set sizes; each
    record's ``data`` field tells them apart). Returns the path written. The provenance's seeds are the configs'.
    """
    parser = argparse.ArgumentParser(description=description or f"writes data/results/{name}.json")
    parser.add_argument("--quick", action="store_true", help="two configs, 50 steps, written to a temporary folder")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    torch.set_num_threads(args.threads)
    configs = list(configs)
    per_config = [tasks] * len(configs) if isinstance(tasks, CourseTasks) else list(tasks)
    if len(per_config) != len(configs) or not all(isinstance(t, CourseTasks) for t in per_config):
        raise ValueError(f"tasks must be a CourseTasks or one per config ({len(configs)}), got {len(per_config)}")
    if args.quick:
        configs, per_config = [dataclasses.replace(c, steps=50) for c in configs[:2]], per_config[:2]
    with Timer() as timer:
        records = [finetune(cfg, t)[1] for cfg, t in tqdm(list(zip(configs, per_config, strict=True)), desc=name)]
    seeds = sorted({c.seed for c in configs})
    directory = Path(tempfile.mkdtemp()) if args.quick else None
    path = save_results(name, {"records": records, **(extra or {})}, seeds=seeds, wall_seconds=timer.seconds,
                        directory=directory)
    print(f"{len(records)} runs in {timer.seconds:.0f} s -> {path}")
    return path
