"""Benchmark: the cost of a DoRA training step, vs LoRA and vs PEFT's DoRA (notebook 09, section 6).

For each width ``d`` and rank ``r`` the script builds one seeded ``nn.Linear(d, d)`` and copies of it:

* ``lora``: :class:`lorakit.LoRALinear` (``alpha = 2r``);
* ``dora``: :class:`lorakit.dora.DoRALinear` with the same ``A``, the same nonzero ``B`` and a magnitude moved
  away from ``||W0||`` (so both halves of DoRA are exercised);
* ``peft_dora``: Hugging Face PEFT's ``use_dora=True`` layer (``get_peft_model`` on a one-layer module named
  ``proj``) with the same ``A``, ``B`` and magnitude.

Before timing, the script checks that lorakit's and PEFT's DoRA give the same output and the same gradients
(``dL/dx``, ``dL/dA``, ``dL/dB``, ``dL/dm``). A *step* is, for every variant (as ``bench/lora_overhead.py``)::

    loss = layer(x).float().square().mean()     # x: [tokens, d], requires grad (mid-network layer)
    loss.backward(); AdamW step; zero_grad; x.grad = None

Timings come from :func:`lorakit.timing.measure_interleaved` (round-robin, medians), so every ratio compares
numbers taken in the same run; ``dora_again`` (a second copy of lorakit's DoRA step) gives the A/A noise floor.

Run ``python bench/dora.py --help``; ``--quick`` is a seconds-long smoke test.
"""

from __future__ import annotations

import argparse
import copy

import peft
import torch
from common import (
    DTYPES,
    OneLayer,
    add_run_arguments,
    check_run_arguments,
    header_lines,
    machine_info,
    make_step,
    outputs_and_input_grads,
    relative_max_abs_diff,
    report_head,
    require_agreement,
    resolve_device,
    write_report,
)
from torch import nn

import lorakit
from lorakit.dora import DoRALinear
from lorakit.timing import measure_interleaved

VARIANTS = ("lora", "dora", "peft_dora", "dora_again")


def build_layers(d: int, r: int, dtype: torch.dtype, device: torch.device, seed: int) -> dict[str, nn.Module]:
    """The lorakit LoRA / lorakit DoRA / PEFT DoRA copies of one seeded layer, with identical adapter tensors."""
    torch.manual_seed(seed)
    base = nn.Linear(d, d).to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    lora = lorakit.LoRALinear(copy.deepcopy(base), r=r, alpha=2 * r)
    with torch.no_grad():
        lora.lora_B.copy_(torch.randn(lora.lora_B.shape, generator=gen) / d**0.5)
    dora = DoRALinear(copy.deepcopy(base), r=r, alpha=2 * r)
    with torch.no_grad():
        dora.lora_A.copy_(lora.lora_A)
        dora.lora_B.copy_(lora.lora_B)
        dora.magnitude.mul_((1 + 0.1 * torch.randn(d, generator=gen)).to(device))
    config = peft.LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=["proj"], use_dora=True)
    peft_model = peft.get_peft_model(OneLayer(copy.deepcopy(base)), config)
    layer = peft_model.base_model.model.proj
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(dora.lora_A)
        layer.lora_B["default"].weight.copy_(dora.lora_B)
        layer.lora_magnitude_vector["default"].weight.copy_(dora.magnitude)
    return {"lora": lora, "dora": dora, "peft_dora": peft_model}


def check_equivalence(layers: dict[str, nn.Module], x: torch.Tensor) -> dict[str, float]:
    """Relative max abs differences lorakit DoRA vs PEFT DoRA; RuntimeError above 1e-4 (fp32) or 3e-2 (bf16)."""
    ours, theirs = layers["dora"], layers["peft_dora"]
    pl = theirs.base_model.model.proj
    results = outputs_and_input_grads((ours, theirs), x)
    pairs = {
        "output": (results[0][0], results[1][0]),
        "grad_x": (results[0][1], results[1][1]),
        "grad_A": (ours.lora_A.grad, pl.lora_A["default"].weight.grad),
        "grad_B": (ours.lora_B.grad, pl.lora_B["default"].weight.grad),
        "grad_magnitude": (ours.magnitude.grad, pl.lora_magnitude_vector["default"].weight.grad),
    }
    errors = relative_max_abs_diff(pairs)
    require_agreement(errors, 1e-4 if x.dtype == torch.float32 else 3e-2, "lorakit and PEFT DoRA")
    ours.zero_grad(set_to_none=True)
    theirs.zero_grad(set_to_none=True)
    return errors


def bench_one(d: int, r: int, tokens: int, dtype: torch.dtype, device: torch.device, repeats: int, warmup: int,
              seed: int) -> dict[str, object]:
    layers = build_layers(d, r, dtype, device, seed)
    x = torch.randn(tokens, d, generator=torch.Generator().manual_seed(seed + 2)).to(device, dtype)
    errors = check_equivalence(layers, x)
    x.requires_grad_(True)
    models = {**layers, "dora_again": copy.deepcopy(layers["dora"])}
    for model in models.values():
        model.train()
    steps = {name: make_step(models[name], x) for name in VARIANTS}
    step_s = measure_interleaved(steps, repeats=repeats, warmup=warmup, device=device)
    ratios = {
        "dora_over_lora": step_s["dora"] / step_s["lora"],
        "dora_over_peft_dora": step_s["dora"] / step_s["peft_dora"],
        "peft_dora_over_lora": step_s["peft_dora"] / step_s["lora"],
        "aa_noise": step_s["dora_again"] / step_s["dora"],
    }
    return {"d": d, "r": r, "tokens": tokens, "relative_max_abs_diff": errors, "step_median_s": step_s,
            "ratios": ratios}


def markdown(report: dict[str, object]) -> str:
    cfg, rows = report["config"], report["results"]
    lines = header_lines(
        report, f"DoRA training-step benchmark ({cfg['device']}, {cfg['dtype']})",
        ("torch", "peft", "transformers", "lorakit"),
        f"tokens per step {cfg['tokens']}, repeats {cfg['repeats']}, warm-up {cfg['warmup']}, seed {cfg['seed']}",
    )
    lines += [
        "",
        "Ratios of median step times from one interleaved run (< 1: the numerator is faster). A/A is lorakit's DoRA "
        "step timed twice: its distance from 1 is the noise floor.",
        "",
        "| d | r | lorakit DoRA / lorakit LoRA | lorakit DoRA / PEFT DoRA | PEFT DoRA / lorakit LoRA | A/A |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        q = row["ratios"]
        lines.append(f"| {row['d']} | {row['r']} | {q['dora_over_lora']:.3f} | {q['dora_over_peft_dora']:.3f} | "
                     f"{q['peft_dora_over_lora']:.3f} | {q['aa_noise']:.3f} |")
    worst = max(max(row["relative_max_abs_diff"].values()) for row in rows)
    lines += ["", f"Equivalence checked before timing: lorakit DoRA vs PEFT DoRA output, dL/dx, dL/dA, dL/dB and "
              f"dL/dm agree to a relative max abs difference of at most {worst:.1e}.", "",
              "Medians in milliseconds:", "",
              "| d | r | " + " | ".join(f"step {v}" for v in VARIANTS[:3]) + " |", "|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['d']} | {row['r']} | "
                     + " | ".join(f"{1e3 * row['step_median_s'][v]:.2f}" for v in VARIANTS[:3]) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096], help="layer widths d (d x d)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[8], help="ranks r (alpha = 2r)")
    parser.add_argument("--tokens", type=int, default=512, help="rows of x per step")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    add_run_arguments(
        parser, device="auto", repeats=10, warmup=2, threads=None,
        quick_help="smoke test: d=256, r=8, 128 tokens, 3 repeats",
        out_help="result JSON (a .md is written next to it); default bench/results/dora_<device>.json "
        "for fp32 (dora_<device>_<dtype>.json otherwise), none with --quick",
    )
    args = parser.parse_args(argv)
    if any(v <= 0 for v in args.sizes + args.ranks) or args.tokens <= 0:
        parser.error("--sizes, --ranks and --tokens must be positive")
    check_run_arguments(parser, args)
    if args.quick:
        args.sizes, args.ranks, args.tokens, args.repeats, args.warmup = [256], [8], 128, 3, 1
    return args


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    results = []
    for d in args.sizes:
        for r in args.ranks:
            row = bench_one(d, r, args.tokens, dtype, device, args.repeats, args.warmup, args.seed)
            q = row["ratios"]
            print(f"d={d:5d} r={r:3d}  DoRA/LoRA {q['dora_over_lora']:.3f}  DoRA/PEFT-DoRA "
                  f"{q['dora_over_peft_dora']:.3f}  PEFT-DoRA/LoRA {q['peft_dora_over_lora']:.3f}  "
                  f"A/A {q['aa_noise']:.3f}", flush=True)
            results.append(row)
    report: dict[str, object] = {
        **report_head("dora", argv),
        "config": {"device": str(device), "dtype": args.dtype, "sizes": args.sizes, "ranks": args.ranks,
                   "alpha": "2r", "tokens": args.tokens, "repeats": args.repeats, "warmup": args.warmup,
                   "seed": args.seed, "quick": args.quick, "optimizer": "AdamW(lr=1e-4)",
                   "loss": "out.float().square().mean()", "note": args.note},
        "machine": machine_info(device),
        "results": results,
    }
    suffix = "" if args.dtype == "fp32" else f"_{args.dtype}"
    write_report(report, args.out, None if args.quick else f"dora_{device.type}{suffix}.json", markdown)
    return report


if __name__ == "__main__":
    main()
