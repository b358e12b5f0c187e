"""Benchmark: training-step and inference time of every PEFT-family method against LoRA (notebook 13).

One seeded randomly initialised TinyLM (the course architecture; ``--d-model``, ``--layers``, ``--seq`` set
its size, default a wider model than the course's so that the matmuls dominate) is adapted by each method
of the comparison (lorakit.family.compare's table arms, with the same configs). For each method, in one
interleaved run (lorakit.timing.measure_interleaved, medians):

* a **training step**: forward, the course loss, backward, the method's optimizer step (AdamW; LoRA+'s groups);
* an **inference forward** (eval mode, no grad), unmerged, and merged for the methods that merge
  (``lorakit.merge_lora``; full fine-tuning has nothing to merge).

Everything is reported as a ratio to LoRA (unmerged LoRA for training; *merged* LoRA for inference, the
deployment baseline), and a second LoRA model (``LoRA (again)``) timed alongside gives the A/A noise floor:
a ratio closer to 1 than the A/A ratio is not a measured difference.

Run ``python bench/family.py --help``; ``--quick`` is a seconds-long smoke test that writes nothing.
"""

from __future__ import annotations

import argparse
import copy

import torch
from common import (
    add_run_arguments,
    check_run_arguments,
    header_lines,
    machine_info,
    report_head,
    resolve_device,
    write_report,
)

from lorakit.family.compare import METHODS, TABLE, make_optimizer
from lorakit.models import TinyLM, TinyLMConfig
from lorakit.peft import merge_lora, trainable_parameters
from lorakit.timing import measure_interleaved


def build(name: str, cfg: TinyLMConfig, device: torch.device, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = TinyLM(cfg).to(device)
    torch.manual_seed(seed + 1)
    return METHODS[name].adapt(model)


def run(args: argparse.Namespace, device: torch.device) -> dict:
    cfg = TinyLMConfig(vocab_size=32, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                       d_ff=4 * args.d_model, max_seq_len=args.seq + 16)
    ids = torch.randint(0, 32, (args.batch, args.seq), generator=torch.Generator().manual_seed(args.seed)).to(device)
    names = [n for n in TABLE if n in args.methods]
    steps, forwards, counts = {}, {}, {}
    for name in [*names, "LoRA (again)"]:
        arm = "LoRA" if name == "LoRA (again)" else name
        model = build(arm, cfg, device, args.seed).train()
        counts[name] = trainable_parameters(model)[0]
        opt = make_optimizer(arm, model, 1e-6)

        def step(model=model, opt=opt) -> None:
            logits = model(ids)
            torch.nn.functional.cross_entropy(logits.float().reshape(-1, 32), ids.reshape(-1)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        steps[name] = step
        infer = copy.deepcopy(model).eval()
        forwards[f"{name} | unmerged"] = _forward(infer, ids)
        if METHODS[arm].mergeable and arm != "full FT":
            forwards[f"{name} | merged"] = _forward(merge_lora(copy.deepcopy(infer)), ids)
    step_s = measure_interleaved(steps, repeats=args.repeats, warmup=args.warmup, device=device)
    fwd_s = measure_interleaved(forwards, repeats=args.repeats, warmup=args.warmup, device=device)
    base_step, base_fwd = step_s["LoRA"], fwd_s["LoRA | merged"]
    rows = []
    for name in names:
        rows.append({"method": name, "trainable": counts[name], "step_s": step_s[name],
                     "step_over_lora": step_s[name] / base_step,
                     "forward_unmerged_over_merged_lora": fwd_s[f"{name} | unmerged"] / base_fwd,
                     "forward_merged_over_merged_lora": (fwd_s[f"{name} | merged"] / base_fwd
                                                         if f"{name} | merged" in fwd_s else None)})
    aa = {"step": step_s["LoRA (again)"] / step_s["LoRA"],
          "forward": fwd_s["LoRA (again) | merged"] / fwd_s["LoRA | merged"]}
    return {"rows": rows, "aa_noise": aa, "step_median_s": step_s, "forward_median_s": fwd_s}


def _forward(model: torch.nn.Module, ids: torch.Tensor):
    def forward() -> None:
        with torch.no_grad():
            model(ids)

    return forward


def markdown(report: dict) -> str:
    cfg, res = report["config"], report["results"]
    lines = header_lines(report, f"PEFT-family step and inference times vs LoRA ({cfg['device']})",
                         ("torch", "peft", "lorakit"),
                         f"TinyLM d_model {cfg['d_model']}, {cfg['layers']} layers, batch {cfg['batch']} x seq "
                         f"{cfg['seq']}, repeats {cfg['repeats']}, warm-up {cfg['warmup']}, seed {cfg['seed']}")
    aa = res["aa_noise"]
    lines += ["", f"Ratios of medians from one interleaved run; A/A (LoRA timed twice): step {aa['step']:.3f}, "
              f"forward {aa['forward']:.3f}.", "",
              "| method | trainable | step / LoRA step | forward / merged-LoRA forward (unmerged) | (merged) |",
              "|---|---:|---:|---:|---:|"]
    for r in res["rows"]:
        m = r["forward_merged_over_merged_lora"]
        merged = "n/a" if m is None else f"{m:.3f}"
        lines.append(f"| {r['method']} | {r['trainable']:,} | {r['step_over_lora']:.3f} | "
                     f"{r['forward_unmerged_over_merged_lora']:.3f} | {merged} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--methods", nargs="+", default=list(TABLE), choices=list(TABLE))
    add_run_arguments(parser, device="auto", repeats=20, warmup=3, threads=None,
                      quick_help="smoke test: d_model 64, 2 layers, seq 16, 3 repeats; writes nothing",
                      out_help="result JSON (a .md next to it); default bench/results/family_<device>.json, none with "
                      "--quick")
    args = parser.parse_args(argv)
    check_run_arguments(parser, args)
    if min(args.d_model, args.layers, args.heads, args.seq, args.batch) <= 0 or args.d_model % args.heads:
        parser.error("--d-model, --layers, --heads, --seq, --batch must be positive, d_model divisible by heads")
    if "LoRA" not in args.methods:
        args.methods = ["LoRA", *args.methods]
    if args.quick:
        args.d_model, args.layers, args.heads, args.seq, args.batch, args.repeats, args.warmup = 64, 2, 4, 16, 4, 3, 1
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results = run(args, device)
    for r in results["rows"]:
        merged = r["forward_merged_over_merged_lora"]
        print(f"{r['method']:18s} step/LoRA {r['step_over_lora']:.3f}  forward/merged LoRA "
              f"{r['forward_unmerged_over_merged_lora']:.3f}" + ("" if merged is None else f" (merged {merged:.3f})"))
    print(f"A/A noise: step {results['aa_noise']['step']:.3f}, forward {results['aa_noise']['forward']:.3f}")
    report = {**report_head("family", argv),
              "config": {"device": str(device), "d_model": args.d_model, "layers": args.layers, "heads": args.heads,
                         "seq": args.seq, "batch": args.batch, "repeats": args.repeats, "warmup": args.warmup,
                         "seed": args.seed, "quick": args.quick, "methods": args.methods, "note": args.note},
              "machine": machine_info(device), "results": results}
    write_report(report, args.out, None if args.quick else f"family_{device.type}.json", markdown)
    return report


if __name__ == "__main__":
    main()
