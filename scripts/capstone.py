"""The capstone's stored runs (notebook 11): every method on MiniLM-L6 + the VADER lexicon, and the papers' analyses.

    python scripts/capstone.py                    # both stages -> data/results/capstone_{main,analyses}.json
    python scripts/capstone.py --stage main       # the comparison only (lr sweep on seed 0, seeds 1-2 at the best lr)
    python scripts/capstone.py --stage analyses   # LoRA Tables 5/6, Figure 3, amplification, rsLoRA, QLoRA, PEFT
    python scripts/capstone.py --quick            # a 2-minute smoke test of both stages into a temporary folder
    python scripts/capstone.py --jobs 2           # worker processes (one torch thread each; default 2)

Everything is seeded; a run's numbers do not depend on which worker ran it. ``make results`` runs this script.
The splits are fixed (seed 0: 70 % train, 10 % validation, 20 % test); a seed sets the head, the adapter's
initial factors and the minibatch order. AdamW, batch 32, 100 steps (about 0.6 epoch), MSE on valence / 4.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import multiprocessing
import sys
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

STEPS = 100
SEEDS = (0, 1, 2)
MD_ARMS = ("full", "lora_all", "dora")  # DoRA Figure 2: magnitude/direction at checkpoints
MD_STEPS = (0, 25, 50, 100)
TABLE5 = {"q": (("q",), 8), "k": (("k",), 8), "v": (("v",), 8), "o": (("o",), 8), "qv": (("q", "v"), 4),
          "qkvo": (("q", "k", "v", "o"), 2), "all": (("q", "k", "v", "o", "up", "down"), 1)}
TABLE6_RANKS = (1, 4, 16, 64)
TABLE6_TARGETS = {"q": ("q",), "qv": ("q", "v"), "qkvo": ("q", "k", "v", "o")}
TABLE6_ONE_SEED_RANKS = (1, 64)  # W_q and W_q,k,v,o: the two ends only
TABLE_LR = 3e-3  # one lr for the LoRA-paper tables, as the paper used one per table
RSLORA_RANKS = (4, 64)
RSLORA_LRS = (1e-3, 3e-3, 1e-2)
QUANT_TYPES = ("nf4", "fp4", "int4")
FIGURE3_LAYER = 5  # the last of MiniLM-L6's six layers

_DATA = None


def _worker_init() -> None:
    torch.set_num_threads(1)


def _data():
    global _DATA
    if _DATA is None:
        from lorakit.capstone import capstone_data
        _DATA = capstone_data()
    return _DATA


def _arm(spec: dict, steps: int):
    from lorakit.capstone import arms_for, lora_arm, qlora_arm, quantized_base_arm
    kind = spec["kind"]
    if kind == "main":
        return arms_for(steps)[spec["arm"]]
    if kind == "lora":
        return lora_arm(spec["arm"], spec["arm"], tuple(spec["targets"]), r=spec["r"], alpha=spec.get("alpha", 16),
                        rslora=spec.get("rslora", False))
    if kind == "qlora":
        return qlora_arm(spec["quant_type"], spec["double_quant"])
    if kind == "probe_q":
        return quantized_base_arm(spec["quant_type"])
    if kind == "lorakit_peft_init":
        from lorakit.capstone.arms import Arm, lora_qv_peft_init
        return Arm(spec["arm"], "lorakit LoRA r=8 on W_q, W_v, PEFT's initial A", lora_qv_peft_init, (spec["lr"],))
    if kind == "peft":
        import peft

        from lorakit.capstone.arms import Arm
        config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"])
        return Arm(spec["arm"], "PEFT LoRA r=8 on W_q, W_v (get_peft_model)",
                   lambda enc: peft.get_peft_model(enc, config), (spec["lr"],))
    raise ValueError(f"unknown arm kind {kind!r}")


def run_one(job: dict) -> dict:
    """One run in a worker: train, then compute the extras the job asks for (small, JSON-ready)."""
    from lorakit.analysis import effective_weights
    from lorakit.capstone import CapstoneConfig, run_arm
    from lorakit.capstone.analyses import amplification, lora_factors, md_points, spectrum_summary
    from lorakit.capstone.arms import LINEAR_TARGETS, targets_regex
    from lorakit.models import load_minilm

    cfg = CapstoneConfig(**job["config"])
    arm = _arm(job["spec"], cfg.steps)
    extras = set(job.get("extras", ()))
    regex = targets_regex(LINEAR_TARGETS)
    checkpoints: dict = {}

    def on_step(model, step):
        if "md" in extras and step in MD_STEPS:
            checkpoints[step] = effective_weights(model.encoder, regex)

    model, record = run_arm(cfg, _data(), arm=arm, on_step=on_step if "md" in extras else None)
    record["spec"] = job["spec"]
    record["stage"] = job["stage"]
    if "md" in extras:
        record["md_points"] = [{k: (round(v, 7) if isinstance(v, float) else v) for k, v in p.items()}
                               for p in md_points(checkpoints)]
    if extras & {"spectrum", "amplification", "factors"}:
        pretrained = effective_weights(load_minilm(), regex)
    if "spectrum" in extras:
        after = effective_weights(model.encoder, regex)
        record["spectrum"] = {name: {k: round(float(v), 6) for k, v in spectrum_summary(after[name] - w0).items()}
                              for name, w0 in pretrained.items()}
    if extras & {"amplification", "factors"}:
        factors = lora_factors(model.encoder)
        if "amplification" in extras:
            r = job["spec"]["r"]
            record["amplification"] = {
                name: {k: round(v, 6) for k, v in amplification(b @ a, pretrained[name], r).items()}
                for name, (a, b) in factors.items()}
        if "factors" in extras:  # A of the last layer's W_q and W_v (6 significant digits), for Figure 3
            record["factors_A"] = {name: [[float(f"{x:.6g}") for x in row] for row in a.float().tolist()]
                                   for name, (a, _) in factors.items()
                                   if name.startswith(f"encoder.layer.{FIGURE3_LAYER}.")
                                   and name.endswith(("query", "value"))}
    if "ranks" in extras:
        from lorakit.adalora import rank_report
        record["ranks"] = rank_report(model.encoder)
    return record


def _run_all(jobs: list[dict], n_jobs: int, desc: str) -> list[dict]:
    if n_jobs <= 1:
        _worker_init()
        return [run_one(j) for j in tqdm(jobs, desc=desc)]
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(n_jobs, mp_context=context, initializer=_worker_init) as pool:
        done = list(tqdm(pool.map(run_one, jobs), total=len(jobs), desc=desc))
    return done


def _job(stage: str, spec: dict, lr: float, seed: int, steps: int, extras: tuple = ()) -> dict:
    return {"stage": stage, "spec": spec, "config": {"arm": spec["arm"], "lr": lr, "seed": seed, "steps": steps},
            "extras": list(extras)}


def _main_extras(arm: str) -> tuple:
    return (("md",) if arm in MD_ARMS else ()) + (("spectrum",) if arm == "full" else ()) + \
        (("ranks",) if arm == "adalora" else ())


def stage_main(args) -> tuple[dict, list[int]]:
    from lorakit.capstone import arms_for, human_ceiling, lexicon_splits, load_lexicon
    from lorakit.capstone.analyses import best_lr

    arms = arms_for(args.steps)
    names = list(arms) if not args.quick else ["probe", "lora_qv", "adalora", "full"]
    sweep = [_job("sweep", {"kind": "main", "arm": a}, lr, 0, args.steps, _main_extras(a))
             for a in names for lr in (arms[a].lrs if not args.quick else arms[a].lrs[1:2])]
    records = _run_all(sweep, args.jobs, "capstone: lr sweep (seed 0)")
    best = {a: best_lr(records, a) for a in names}
    seeds = SEEDS[1:] if not args.quick else (1,)
    more = [_job("seeds", {"kind": "main", "arm": a}, best[a], s, args.steps, _main_extras(a))
            for a in names for s in seeds]
    records += _run_all(more, args.jobs, "capstone: seeds 1-2 at the best lr")
    lexicon = load_lexicon()
    splits = lexicon_splits(lexicon)
    sizes = {k: len(getattr(splits, k)) for k in ("train", "val", "test")}
    results = {"steps": args.steps, "batch_size": 32, "splits": sizes,
               "ceiling": {"all": human_ceiling(lexicon), "test": human_ceiling(splits.test)},
               "best_lr": best, "records": records}
    return results, [0, *seeds]


def stage_analyses(args, main: dict) -> tuple[dict, list[int]]:
    steps, seeds = args.steps, (SEEDS if not args.quick else (0,))
    jobs = []
    t5 = TABLE5 if not args.quick else {"q": TABLE5["q"]}
    for key, (kinds, r) in t5.items():
        for s in seeds:
            spec = {"kind": "lora", "arm": f"t5_{key}_r{r}", "targets": kinds, "r": r}
            jobs.append(_job("table5", spec, TABLE_LR, s, steps))
    ranks = TABLE6_RANKS if not args.quick else (1, 64)
    for key, kinds in (TABLE6_TARGETS.items() if not args.quick else [("qv", ("q", "v"))]):
        for r in (ranks if key == "qv" or args.quick else TABLE6_ONE_SEED_RANKS):
            # 3 seeds at the smallest and largest rank of W_q, W_v; one seed elsewhere (the CPU budget)
            for s in (seeds if key == "qv" and r in (ranks[0], ranks[-1]) else seeds[:1]):
                extras = ("amplification", "factors") if key == "qv" and s == 0 else ()
                jobs.append(_job("table6", {"kind": "lora", "arm": f"t6_{key}_r{r}", "targets": kinds, "r": r},
                                 TABLE_LR, s, steps, extras))
    if not args.quick:
        jobs.append(_job("table6", {"kind": "lora", "arm": "t6_qv_r8", "targets": ("q", "v"), "r": 8}, TABLE_LR, 0,
                         steps, ("amplification", "factors")))
    for r in (RSLORA_RANKS if not args.quick else (4,)):
        for rs in (False, True):
            for lr in (RSLORA_LRS if not args.quick else RSLORA_LRS[:1]):
                spec = {"kind": "lora", "arm": f"rs_{'sqrt' if rs else 'lin'}_r{r}", "targets": ("q", "v"), "r": r,
                        "rslora": rs}
                jobs.append(_job("rslora", spec, lr, 0, steps))
    best = main["best_lr"]
    for qt in (QUANT_TYPES if not args.quick else ("nf4",)):
        lr_q = best.get(f"qlora_{qt}", best.get("lora_qv"))
        for s in seeds:
            if qt == "nf4" or s == seeds[0]:  # without DQ: 3 seeds for NF4, one for FP4 and INT4
                jobs.append(_job("qlora", {"kind": "qlora", "arm": f"qlora_{qt}_nodq", "quant_type": qt,
                                           "double_quant": False}, lr_q, s, steps))
            if qt == "nf4" or s == seeds[0]:  # the base alone: 3 seeds for NF4, one for FP4 and INT4
                spec = {"kind": "probe_q", "arm": f"probe_{qt}", "quant_type": qt}
                jobs.append(_job("qlora", spec, best["probe"], s, steps))
    for kind, name in (("peft", "peft_lora_qv"), ("lorakit_peft_init", "lorakit_lora_qv_peft_init")):
        jobs.append(_job("peft", {"kind": kind, "arm": name, "lr": best["lora_qv"]}, best["lora_qv"], 0, steps))
    records = _run_all(jobs, args.jobs, "capstone: analyses")
    return {"steps": steps, "table_lr": TABLE_LR, "records": records}, list(seeds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("all", "main", "analyses"), default="all")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    args.steps = args.steps if args.steps is not None else (20 if args.quick else STEPS)
    if args.steps < 20:
        parser.error("--steps must be >= 20")
    from lorakit.results import RESULTS_DIR, Timer, save_results
    directory = Path(tempfile.mkdtemp()) if args.quick else RESULTS_DIR
    if args.stage in ("all", "main"):
        with Timer() as timer:
            results, seeds = stage_main(args)
        print("main ->", save_results("capstone_main", results, seeds=seeds, wall_seconds=timer.seconds,
                                      directory=directory), f"({timer.seconds:.0f} s)")
    if args.stage in ("all", "analyses"):
        path = directory / "capstone_main.json"
        if not path.is_file():
            sys.exit(f"{path} is missing: run the main stage first (python scripts/capstone.py --stage main)")
        main_results = json.loads(path.read_text())["results"]
        with Timer() as timer:
            results, seeds = stage_analyses(args, main_results)
        print("analyses ->", save_results("capstone_analyses", results, seeds=seeds, wall_seconds=timer.seconds,
                                          directory=directory), f"({timer.seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
