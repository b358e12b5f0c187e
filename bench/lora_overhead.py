"""Benchmark: the cost of a LoRA training step and of a merged forward (see bench/README.md).

For each width ``d`` and rank ``r`` the script builds one seeded ``nn.Linear(d, d)`` and three identical
copies of it:

* ``frozen``: the plain ``nn.Linear`` with every parameter frozen (the floor a LoRA step is compared to);
* ``lorakit``: :class:`lorakit.LoRALinear` (``alpha = 2r``, custom autograd backward);
* ``peft``: Hugging Face PEFT's LoRA (``get_peft_model`` on a one-layer module named ``proj``).

lorakit and PEFT get the same ``A`` and the same nonzero ``B``, and the script checks that they return the
same output and the same gradients before timing anything. A *step* is, for every variant::

    out = layer(x)                     # x: [tokens, d], x.requires_grad=True (dL/dx is needed, as mid-network)
    loss = out.float().square().mean()
    loss.backward()                    # frozen: dL/dx only; LoRA: dL/dx, dL/dA, dL/dB
    optimizer.step()                   # AdamW on the trainable parameters (skipped for frozen: there are none)
    optimizer.zero_grad(set_to_none=True); x.grad = None

A *forward* is ``layer(x)`` under ``torch.no_grad()`` in eval mode on an input that does not require grad,
for ``nn.Linear``, lorakit merged (``merge()``: one matmul), lorakit unmerged and PEFT unmerged.

All timings come from :func:`lorakit.timing.measure_interleaved` (warm-up, then round-robin, median per
variant), so every ratio compares numbers taken in the same run under the same machine load. A second
copy of the lorakit step (``lorakit_again``) is timed too: ``lorakit_again / lorakit`` is an A/A ratio that
shows how much two identical steps differ on this machine in this run (the noise floor of every ratio).

Run ``python bench/lora_overhead.py --help``; ``--quick`` is a seconds-long smoke test.
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
    make_forward,
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
from lorakit.memory import cuda_peak_bytes
from lorakit.timing import measure_interleaved

STEP_VARIANTS = ("frozen", "lorakit", "peft", "lorakit_again")
FORWARD_VARIANTS = ("linear", "lorakit_merged", "lorakit_unmerged", "peft_unmerged")
TARGET_STEP_RATIO = 1.05  # lorakit step / PEFT step (from the issue)
TARGET_MERGED_RATIO = 1.02  # lorakit merged forward / nn.Linear forward (from the issue)


def build_layers(d: int, r: int, dtype: torch.dtype, device: torch.device, seed: int) -> dict[str, nn.Module]:
    """The seeded base layer and its frozen / lorakit / PEFT / merged copies, sharing identical A and B."""
    torch.manual_seed(seed)
    base = nn.Linear(d, d).to(device=device, dtype=dtype)

    frozen = copy.deepcopy(base).requires_grad_(False)
    lk = lorakit.LoRALinear(copy.deepcopy(base), r=r, alpha=2 * r)
    with torch.no_grad():  # nonzero B (the default B = 0 would make the bypass output zero)
        lk.lora_B.copy_(torch.randn(lk.lora_B.shape, generator=torch.Generator().manual_seed(seed + 1)) / d**0.5)

    config = peft.LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=["proj"])
    peft_model = peft.get_peft_model(OneLayer(copy.deepcopy(base)), config)
    peft_layer = peft_model.base_model.model.proj
    with torch.no_grad():
        peft_layer.lora_A["default"].weight.copy_(lk.lora_A)
        peft_layer.lora_B["default"].weight.copy_(lk.lora_B)
    if peft_layer.scaling["default"] != lk.scaling:
        raise RuntimeError(f"scaling differs: PEFT {peft_layer.scaling['default']} vs lorakit {lk.scaling}")

    merged = copy.deepcopy(lk)
    merged.merge()
    return {"linear": base, "frozen": frozen, "lorakit": lk, "peft": peft_model, "lorakit_merged": merged}


def check_equivalence(layers: dict[str, nn.Module], x: torch.Tensor) -> dict[str, float]:
    """Relative max abs differences, lorakit vs PEFT (output, dL/dx, dL/dA, dL/dB) and merged vs unmerged.

    Each entry is ``max|a - b| / max|b|``; a RuntimeError is raised when one exceeds 1e-4 (fp32) or 3e-2 (bf16).
    """
    lk, pm = layers["lorakit"], layers["peft"]
    pl = pm.base_model.model.proj
    xs = outputs_and_input_grads((lk, pm), x)
    with torch.no_grad():
        pairs = {
            "output": (xs[0][0], xs[1][0]),
            "grad_x": (xs[0][1], xs[1][1]),
            "grad_A": (lk.lora_A.grad, pl.lora_A["default"].weight.grad),
            "grad_B": (lk.lora_B.grad, pl.lora_B["default"].weight.grad),
            "merged_vs_unmerged_output": (layers["lorakit_merged"](x), lk(x)),
        }
    results = relative_max_abs_diff(pairs)
    require_agreement(results, 1e-4 if x.dtype == torch.float32 else 3e-2, "lorakit and PEFT")
    lk.zero_grad(set_to_none=True)
    pm.zero_grad(set_to_none=True)
    return results


def bench_one(
    d: int, r: int, tokens: int, dtype: torch.dtype, device: torch.device, repeats: int, warmup: int, seed: int
) -> dict[str, object]:
    """Medians, ratios, equivalence errors (and CUDA peak memory) for one ``(d, r)``."""
    layers = build_layers(d, r, dtype, device, seed)
    x_train = torch.randn(tokens, d, generator=torch.Generator().manual_seed(seed + 2)).to(device, dtype)
    errors = check_equivalence(layers, x_train)
    x_train.requires_grad_(True)
    x_eval = x_train.detach().clone()

    # independent optimizer state per step function; lorakit_again trains its own deep copy of lorakit
    models = {"frozen": layers["frozen"], "lorakit": layers["lorakit"], "peft": layers["peft"],
              "lorakit_again": copy.deepcopy(layers["lorakit"])}
    steps = {name: make_step(models[name], x_train) for name in STEP_VARIANTS}
    step_s = measure_interleaved(steps, repeats=repeats, warmup=warmup, device=device)

    peft_eval = copy.deepcopy(layers["peft"])
    forwards = {
        "linear": make_forward(layers["linear"], x_eval),
        "lorakit_merged": make_forward(layers["lorakit_merged"], x_eval),
        "lorakit_unmerged": make_forward(copy.deepcopy(layers["lorakit"]), x_eval),
        "peft_unmerged": make_forward(peft_eval, x_eval),
    }
    forward_s = measure_interleaved(forwards, repeats=repeats, warmup=warmup, device=device)

    ratios = {
        "step_lorakit_over_peft": step_s["lorakit"] / step_s["peft"],
        "step_lorakit_over_frozen": step_s["lorakit"] / step_s["frozen"],
        "step_peft_over_frozen": step_s["peft"] / step_s["frozen"],
        "step_aa_noise": step_s["lorakit_again"] / step_s["lorakit"],
        "forward_merged_over_linear": forward_s["lorakit_merged"] / forward_s["linear"],
        "forward_unmerged_over_linear": forward_s["lorakit_unmerged"] / forward_s["linear"],
        "forward_peft_unmerged_over_linear": forward_s["peft_unmerged"] / forward_s["linear"],
    }
    result: dict[str, object] = {
        "d": d, "r": r, "tokens": tokens,
        "trainable_params": {"lorakit": sum(p.numel() for p in layers["lorakit"].parameters() if p.requires_grad),
                             "peft": sum(p.numel() for p in layers["peft"].parameters() if p.requires_grad)},
        "relative_max_abs_diff": errors,
        "step_median_s": step_s,
        "forward_median_s": forward_s,
        "ratios": ratios,
        "meets_target": {
            "step_lorakit_over_peft": ratios["step_lorakit_over_peft"] <= TARGET_STEP_RATIO,
            "forward_merged_over_linear": ratios["forward_merged_over_linear"] <= TARGET_MERGED_RATIO,
        },
    }
    if device.type == "cuda":  # extra bytes allocated during one step, above what is resident before it
        result["cuda_peak_step_bytes"] = {name: cuda_peak_bytes(steps[name], device) for name in STEP_VARIANTS[:3]}
        result["cuda_peak_forward_bytes"] = {name: cuda_peak_bytes(fn, device) for name, fn in forwards.items()}
    return result


def markdown(report: dict[str, object]) -> str:
    """A Markdown summary of ``report``: configuration, ratio table, medians table."""
    cfg, rows = report["config"], report["results"]
    lines = header_lines(
        report, f"LoRA overhead benchmark ({cfg['device']}, {cfg['dtype']})",
        ("torch", "peft", "transformers", "lorakit"),
        f"tokens per step {cfg['tokens']}, repeats {cfg['repeats']}, warm-up {cfg['warmup']}, seed {cfg['seed']}",
    )
    lines += [
        "",
        "Ratios (medians from one interleaved run; < 1 means the numerator is faster). "
        f"Targets: lorakit/PEFT step <= {TARGET_STEP_RATIO}, merged/Linear forward <= {TARGET_MERGED_RATIO}. "
        "A/A is lorakit's step timed twice: its distance from 1 is the noise floor.",
        "",
        "| d | r | lorakit/PEFT step | lorakit/frozen step | PEFT/frozen step | A/A step | "
        "merged/Linear fwd | unmerged/Linear fwd | PEFT unmerged/Linear fwd |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        q = row["ratios"]
        ok = {k: "" if v else " ✗" for k, v in row["meets_target"].items()}
        lines.append(
            f"| {row['d']} | {row['r']} | {q['step_lorakit_over_peft']:.3f}{ok['step_lorakit_over_peft']}"
            f" | {q['step_lorakit_over_frozen']:.3f} | {q['step_peft_over_frozen']:.3f} | {q['step_aa_noise']:.3f}"
            f" | {q['forward_merged_over_linear']:.3f}{ok['forward_merged_over_linear']}"
            f" | {q['forward_unmerged_over_linear']:.3f} | {q['forward_peft_unmerged_over_linear']:.3f} |"
        )
    worst = max(max(row["relative_max_abs_diff"].values()) for row in rows)
    lines += ["", "✗ = misses the target.", "",
              f"Equivalence checked before timing: lorakit vs PEFT output, dL/dx, dL/dA, dL/dB and merged vs "
              f"unmerged output agree to a relative max abs difference of at most {worst:.1e}.", "",
              "Medians in milliseconds:", "",
              "| d | r | " + " | ".join(f"step {v}" for v in STEP_VARIANTS[:3])
              + " | " + " | ".join(f"fwd {v}" for v in FORWARD_VARIANTS) + " |",
              "|---:|---:|" + "---:|" * (3 + len(FORWARD_VARIANTS))]
    for row in rows:
        cells = [f"{1e3 * row['step_median_s'][v]:.3f}" for v in STEP_VARIANTS[:3]]
        cells += [f"{1e3 * row['forward_median_s'][v]:.3f}" for v in FORWARD_VARIANTS]
        lines.append(f"| {row['d']} | {row['r']} | " + " | ".join(cells) + " |")
    if any("cuda_peak_step_bytes" in row for row in rows):
        lines += ["", "CUDA peak memory allocated during one step, above the resident state (MiB):", "",
                  "| d | r | frozen | lorakit | PEFT |", "|---:|---:|---:|---:|---:|"]
        for row in rows:
            peak = row["cuda_peak_step_bytes"]
            lines.append(f"| {row['d']} | {row['r']} | "
                         + " | ".join(f"{peak[v] / 2**20:.1f}" for v in STEP_VARIANTS[:3]) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096], help="layer widths d (d x d)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 64], help="LoRA ranks r (alpha = 2r)")
    parser.add_argument("--tokens", type=int, default=2048, help="rows of x per step")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="base layer and input dtype")
    add_run_arguments(
        parser, device="auto", repeats=20, warmup=3, threads=None,
        quick_help="smoke test: d=256, r=8, 256 tokens, 3 repeats, 1 warm-up (overrides those options)",
        out_help="result JSON (a .md table is written next to it); default "
        "bench/results/lora_overhead_<device>_<dtype>.json, and none with --quick",
    )
    args = parser.parse_args(argv)
    for name in ("sizes", "ranks"):
        if any(v <= 0 for v in getattr(args, name)):
            parser.error(f"--{name} must be positive ints")
    if args.tokens <= 0:
        parser.error("--tokens must be a positive int")
    check_run_arguments(parser, args)
    if args.quick:
        args.sizes, args.ranks, args.tokens, args.repeats, args.warmup = [256], [8], 256, 3, 1
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
            print(f"d={d:5d} r={r:3d}  lorakit/PEFT step {q['step_lorakit_over_peft']:.3f}  "
                  f"lorakit/frozen {q['step_lorakit_over_frozen']:.3f}  PEFT/frozen {q['step_peft_over_frozen']:.3f}  "
                  f"A/A {q['step_aa_noise']:.3f}  merged/Linear fwd {q['forward_merged_over_linear']:.3f}  "
                  f"unmerged/Linear fwd {q['forward_unmerged_over_linear']:.3f}", flush=True)
            results.append(row)
    report: dict[str, object] = {
        **report_head("lora_overhead", argv),
        "config": {"device": str(device), "dtype": args.dtype, "sizes": args.sizes, "ranks": args.ranks,
                   "alpha": "2r", "tokens": args.tokens, "repeats": args.repeats, "warmup": args.warmup,
                   "seed": args.seed, "quick": args.quick, "optimizer": "AdamW(lr=1e-4)",
                   "loss": "out.float().square().mean()", "note": args.note,
                   "targets": {"step_lorakit_over_peft": TARGET_STEP_RATIO,
                               "forward_merged_over_linear": TARGET_MERGED_RATIO}},
        "machine": machine_info(device),
        "results": results,
    }
    write_report(report, args.out, None if args.quick else f"lora_overhead_{device.type}_{args.dtype}.json", markdown)
    return report


if __name__ == "__main__":
    main()
