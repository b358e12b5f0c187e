"""The PEFT-family comparison of notebook 13, too long for the notebook: writes data/results/family_comparison.json.

    python scripts/results_family_comparison.py            # the full run (see the README for its wall time)
    python scripts/results_family_comparison.py --quick    # seconds: two arms, one seed, 20 steps, writes nothing

Protocol (every arm of :data:`lorakit.family.compare.METHODS`, the pretrained TinyLM, the Caesar task):

1. learning-rate sweep on seed 0: each of the arm's 3 learning rates, ``--steps`` AdamW steps (LoRA+: its
   parameter groups; GaLore: its optimizer), batch 64; held-out loss and exact-match at the end;
2. the learning rate with the lowest held-out loss is the arm's tuned lr; seeds 1 and 2 are trained at it,
   so every arm reports 3 seeds (mean and sample std) at its own tuned lr;
3. for the table arms, timed in one interleaved run (lorakit.family.compare.fastest_interleaved: the fastest of
   the rounds, robust to a busy machine): a training
   step (forward, backward, optimizer) and an inference forward (batch 64, no grad), unmerged and, where the
   method merges, merged; ``LoRA (again)`` is a second LoRA model timed alongside, the A/A noise floor.

Results are saved with lorakit.results.save_results (command, seeds, versions, machine, wall time). One
torch thread (the shared 2-core machine is often busy; results are bitwise equal with 2 threads, which the
notebook's live re-run checks).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lorakit.data import caesar_task, lm_loss  # noqa: E402
from lorakit.family.compare import METHODS, TABLE, build, fastest_interleaved, make_optimizer, train_run  # noqa: E402
from lorakit.peft import merge_lora  # noqa: E402
from lorakit.results import Timer, load_results, save_results, spread  # noqa: E402


def cached_run(name, lr, seed, steps, data, cache) -> dict:
    """A run from an earlier file of the same protocol (``--resume``), else a new one."""
    key = (name, float(lr), seed, steps)
    if key in cache:
        return cache[key]
    train, heldout = data
    return train_run(name, lr, seed, train, heldout, steps=steps, eval_every=max(steps // 2, 1)).to_dict()


def sweep_arm(name: str, steps: int, seeds: list[int], data, log, cache) -> dict:
    method = METHODS[name]
    sweep = []
    for lr in method.lrs:
        r = SimpleNamespace(**cached_run(name, lr, seeds[0], steps, data, cache))
        sweep.append(vars(r))
        log(f"  {name:28s} lr {lr:<7g} seed {seeds[0]}: loss {r.loss[-1]:.3f} exact {r.exact_match[-1]:.3f}")
    best = min(sweep, key=lambda r: r["loss"][-1])
    runs = [best]
    for seed in seeds[1:]:
        r = SimpleNamespace(**cached_run(name, best["lr"], seed, steps, data, cache))
        runs.append(vars(r))
        log(f"  {name:28s} lr {best['lr']:<7g} seed {seed}: loss {r.loss[-1]:.3f} exact {r.exact_match[-1]:.3f}")
    return {
        "family": method.family, "mergeable": method.mergeable, "lrs": list(method.lrs), "best_lr": best["lr"],
        "best_lr_at_grid_edge": best["lr"] in (method.lrs[0], method.lrs[-1]),
        "trainable": best["trainable"], "total": best["total"], "optimizer_state_bytes": best["optimizer_state_bytes"],
        "exact_match": spread(r["exact_match"][-1] for r in runs), "loss": spread(r["loss"][-1] for r in runs),
        "sweep": sweep, "runs": runs,
    }


def time_arms(names: list[str], data, repeats: int) -> dict:
    """Fastest train-step and inference seconds of each arm, one interleaved run (plus an A/A LoRA copy)."""
    train, heldout = data
    ids, tgt = train.input_ids[:64], train.targets[:64]
    eval_ids = heldout.input_ids[:64]
    steps, forwards = {}, {}
    for name in [*names, "LoRA (again)"]:
        arm = "LoRA" if name == "LoRA (again)" else name
        model = build(arm, 0).train()
        opt = make_optimizer(arm, model, METHODS[arm].lrs[0] * 1e-3)  # a tiny lr: timing only

        def step(model=model, opt=opt) -> None:
            lm_loss(model(ids), tgt).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        steps[name] = step
        infer = copy.deepcopy(model).eval()

        def forward(model=infer) -> None:
            with torch.no_grad():
                model(eval_ids)

        forwards[f"{name} | unmerged"] = forward
        if METHODS[arm].mergeable and arm != "full FT":
            merged = merge_lora(copy.deepcopy(infer)) if arm not in ("full FT",) else infer

            def forward_merged(model=merged) -> None:
                with torch.no_grad():
                    model(eval_ids)

            forwards[f"{name} | merged"] = forward_merged
    step_s = fastest_interleaved(steps, repeats=repeats, warmup=3)
    fwd_s = fastest_interleaved(forwards, repeats=repeats * 2, warmup=3)
    return {"train_step_s": step_s, "forward_s": fwd_s, "batch": 64, "repeats": repeats}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(METHODS), help="arms of lorakit.family.compare.METHODS")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds per arm (twice as many forwards)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke test: LoRA and IA3, seed 0, 20 steps, no file")
    parser.add_argument("--resume", action="store_true", help="reuse the runs of the existing results file "
                        "(same arm, lr, seed and steps)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="directories holding partial "
                        "family_comparison.json files (runs split over processes): combine their arms with the "
                        "default file's, time the table arms, write the default file")
    parser.add_argument("--no-timing", action="store_true", help="skip the timing of the table arms")
    parser.add_argument("--out", type=Path, default=None, help="directory for family_comparison.json "
                        "(default data/results)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.arms) - set(METHODS))
    if unknown:
        parser.error(f"unknown arms {unknown}; choose from {sorted(METHODS)}")
    if args.steps <= 0 or args.repeats <= 0 or args.threads <= 0:
        parser.error("--steps, --repeats and --threads must be positive")
    if args.quick:
        args.arms, args.seeds, args.steps, args.repeats = ["LoRA", "IA3"], [0], 20, 2
    torch.set_num_threads(args.threads)
    data = caesar_task()
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    results: dict = {"task": "caesar (lorakit.data.caesar_task(), 512 train / 512 held-out words)",
                     "model": "pretrained TinyLM (data/tiny_lm)", "steps": args.steps, "batch_size": 64,
                     "protocol": "lr sweep on the first seed, best held-out loss -> the other seeds at that lr",
                     "arms": {}}
    if args.merge:
        merge(args, data, log)
        return
    cache: dict = {}
    if args.resume:
        old = load_results("family_comparison", directory=args.out)["results"]["arms"]
        for arm in old.values():
            for r in arm["sweep"] + arm["runs"]:
                cache[(r["name"], float(r["lr"]), r["seed"], r["steps"])] = r
        log(f"resuming: {len(cache)} stored runs")
    results["reused_runs_from_an_earlier_invocation"] = len(cache)
    table = [n for n in TABLE if n in args.arms]
    order = table + [n for n in args.arms if n not in table]
    with Timer() as timer:
        start = time.time()
        for name in order:
            log(f"{name} ({time.time() - start:.0f} s)")
            results["arms"][name] = sweep_arm(name, args.steps, args.seeds, data, log, cache)
            if table and name == table[-1] and not args.no_timing:
                log("timing the table arms")
                results["timing"] = time_arms(table, data, args.repeats)
            if not args.quick:
                save_results("family_comparison", results, args.seeds, time.time() - start, directory=args.out)
    if args.quick:
        for name, arm in results["arms"].items():
            log(f"{name}: best lr {arm['best_lr']}, loss {arm['loss']['mean']:.3f}, "
                f"exact {arm['exact_match']['mean']:.2f}")
        log(f"train step medians (s): { {k: round(v, 4) for k, v in results['timing']['train_step_s'].items()} }")
        return
    path = save_results("family_comparison", results, args.seeds, timer.seconds, directory=args.out)
    log(f"wrote {path} ({timer.seconds:.0f} s)")


def merge(args: argparse.Namespace, data, log) -> None:
    """Combine partial result files (the default one first, then ``--merge`` dirs), time the table, save."""
    parts = [load_results("family_comparison")] + [load_results("family_comparison", directory=d) for d in args.merge]
    results = {k: v for k, v in parts[0]["results"].items() if k != "timing"}
    results["arms"] = {}
    for part in parts:
        results["arms"].update(part["results"]["arms"])
    results["merged_from"] = [p["provenance"]["command"] for p in parts]
    wall = sum(p["provenance"]["wall_seconds"] for p in parts)
    missing = [n for n in TABLE if n not in results["arms"]]
    if missing:
        raise SystemExit(f"cannot merge: table arms {missing} have no results")
    with Timer() as timer:
        log("timing the table arms")
        results["timing"] = time_arms(list(TABLE), data, args.repeats)
    ordered = {n: results["arms"][n] for n in list(TABLE) + [n for n in METHODS if n in results["arms"]]}
    results["arms"] = ordered
    path = save_results("family_comparison", results, args.seeds, wall + timer.seconds)
    log(f"wrote {path}: {len(ordered)} arms; wall time of all parts {wall + timer.seconds:.0f} s")


if __name__ == "__main__":
    main()
