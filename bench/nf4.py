"""Benchmark: lorakit's NF4 and QLoRA layer next to bitsandbytes and PEFT (notebooks 06-08).

Three measurements, each a ratio of medians taken in one interleaved run (:func:`lorakit.timing.measure_interleaved`):

* **quantize**: ``lorakit.nf4.quantize_nf4(w, 64, double_quant=True)`` vs
  ``bitsandbytes.functional.quantize_4bit(w, 64, compress_statistics=True, quant_type="nf4")`` on a bf16
  ``[d, d]`` weight (the dtype transformers loads a model in before quantizing it);
* **dequantize**: ``lorakit.nf4.dequantize_nf4(q)`` (the public, checked function: it validates ``q`` on every
  call) vs ``bitsandbytes.functional.dequantize_4bit`` of the same tensor, both returning bf16 (target:
  lorakit's throughput >= 0.5x bitsandbytes' on CPU); plus the unchecked kernel a QLoRA layer runs in every
  forward and backward (``NF4Linear.dequantized_weight``, :mod:`lorakit.nf4.kernels`: no validation, no host sync);
* **QLoRA step**: forward + backward + AdamW on one layer, for ``QLoRALinear(backend="lorakit")``,
  ``QLoRALinear(backend="bitsandbytes")`` and PEFT's LoRA on a bitsandbytes ``Linear4bit`` (``get_peft_model``;
  the layers PEFT users train), plus an identical second copy of the lorakit layer (A/A noise floor). All
  get the same A and a non-zero B, and the script checks that their outputs agree before timing.

Before timing, the quantized bytes of lorakit and bitsandbytes are compared and the result recorded.
Throughputs are in weights per second; "x bnb" ratios above 1 mean lorakit is faster.

Run ``python bench/nf4.py --help``; ``--quick`` is a seconds-long smoke test. See bench/README.md.
"""

from __future__ import annotations

import argparse
import copy

import peft
import torch
from common import (
    OneLayer,
    add_run_arguments,
    check_run_arguments,
    header_lines,
    machine_info,
    make_step,
    relative_max_abs_diff,
    report_head,
    require_agreement,
    resolve_device,
    write_report,
)
from torch import nn

from lorakit import nf4
from lorakit._bnb import import_bitsandbytes
from lorakit.qlora import NF4Linear, QLoRALinear, bnb_linear4bit_from_linear
from lorakit.timing import measure_interleaved

bnb = import_bitsandbytes()  # with an install hint when the course extra is missing

TARGET_DEQUANT_THROUGHPUT = 0.5  # lorakit dequantize throughput / bitsandbytes' (CPU), from the issue
BLOCKSIZE = 64


def bench_codec(d: int, device: torch.device, repeats: int, warmup: int, seed: int) -> dict[str, object]:
    """Quantize and dequantize a seeded bf16 ``[d, d]`` weight with both libraries."""
    w = (0.02 * torch.randn(d, d, generator=torch.Generator().manual_seed(seed))).to(device, torch.bfloat16)
    q = nf4.quantize_nf4(w, BLOCKSIZE, double_quant=True)
    packed, state = bnb.functional.quantize_4bit(w, blocksize=BLOCKSIZE, compress_statistics=True, quant_type="nf4")
    w_lk, w_bnb = nf4.dequantize_nf4(q), bnb.functional.dequantize_4bit(packed, state)
    layer = NF4Linear(q, None)  # the layer's storage; its decode is the unchecked, sync-free kernel
    check = {
        "packed_bytes_equal": bool(torch.equal(q.packed, packed.flatten())),
        "kernel_equals_checked": bool(torch.equal(layer.dequantized_weight(torch.bfloat16), w_lk)),
        "dq_codes_differing_fraction": (q.absmax.codes != state.absmax).float().mean().item(),
        "dequantized_rel_max_abs_diff": relative_max_abs_diff({"w": (w_lk, w_bnb)})["w"],
    }
    quant_s = measure_interleaved({
        "lorakit": lambda: nf4.quantize_nf4(w, BLOCKSIZE, double_quant=True),
        "bitsandbytes": lambda: bnb.functional.quantize_4bit(w, blocksize=BLOCKSIZE, compress_statistics=True,
                                                             quant_type="nf4"),
    }, repeats=max(1, repeats // 3), warmup=min(warmup, 1), device=device)
    dequant_s = measure_interleaved({
        "lorakit": lambda: nf4.dequantize_nf4(q),
        "bitsandbytes": lambda: bnb.functional.dequantize_4bit(packed, state),
        "lorakit_again": lambda: nf4.dequantize_nf4(q),
        "lorakit_kernel": lambda: layer.dequantized_weight(torch.bfloat16),
    }, repeats=repeats, warmup=warmup, device=device)
    n = d * d
    return {
        "d": d, "numel": n, "check": check,
        "quantize_median_s": quant_s, "dequantize_median_s": dequant_s,
        "throughput_weights_per_s": {
            "quantize": {k: n / v for k, v in quant_s.items()},
            "dequantize": {k: n / v for k, v in dequant_s.items()},
        },
        "ratios": {
            "quantize_throughput_lorakit_over_bnb": quant_s["bitsandbytes"] / quant_s["lorakit"],
            "dequantize_throughput_lorakit_over_bnb": dequant_s["bitsandbytes"] / dequant_s["lorakit"],
            "dequantize_aa_noise": dequant_s["lorakit_again"] / dequant_s["lorakit"],
            "dequantize_kernel_throughput_lorakit_over_bnb": dequant_s["bitsandbytes"] / dequant_s["lorakit_kernel"],
        },
        "meets_target": {"dequantize_throughput_lorakit_over_bnb":
                         dequant_s["bitsandbytes"] / dequant_s["lorakit"] >= TARGET_DEQUANT_THROUGHPUT},
    }


def build_layers(d: int, r: int, device: torch.device, seed: int) -> dict[str, nn.Module]:
    """The same seeded ``nn.Linear(d, d)`` as QLoRA (both backends) and as PEFT LoRA on bnb Linear4bit."""
    torch.manual_seed(seed)
    base = nn.Linear(d, d).to(device)
    lk = QLoRALinear(copy.deepcopy(base), r=r, alpha=2 * r, backend="lorakit")
    with torch.no_grad():
        lk.lora_B.normal_(0.0, 0.02, generator=torch.Generator(device=device).manual_seed(seed + 1))
    bb = QLoRALinear(copy.deepcopy(base), r=r, alpha=2 * r, backend="bitsandbytes")
    four = bnb_linear4bit_from_linear(copy.deepcopy(base))
    model = OneLayer(four)
    model.is_loaded_in_4bit = True  # PEFT dispatches to its bitsandbytes 4-bit LoRA layer
    pm = peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["proj"]))
    pl = pm.base_model.model.proj
    with torch.no_grad():
        for a, b in ((bb.lora_A, lk.lora_A), (bb.lora_B, lk.lora_B), (pl.lora_A["default"].weight, lk.lora_A),
                     (pl.lora_B["default"].weight, lk.lora_B)):
            a.copy_(b)
    return {"qlora_lorakit": lk, "qlora_bitsandbytes": bb, "peft_bnb": pm, "qlora_lorakit_again": copy.deepcopy(lk)}


def bench_step(d: int, r: int, tokens: int, device: torch.device, repeats: int, warmup: int, seed: int) -> dict:
    """Forward + backward + AdamW medians of the QLoRA layers, and their output agreement."""
    layers = build_layers(d, r, device, seed)
    x = torch.randn(tokens, d, generator=torch.Generator().manual_seed(seed + 2)).to(device)
    with torch.no_grad():
        ref = layers["peft_bnb"](x)
        diffs = relative_max_abs_diff({name: (layers[name](x), ref)
                                       for name in ("qlora_lorakit", "qlora_bitsandbytes")})
    require_agreement(diffs, 3e-2, "QLoRA layers and PEFT")
    x.requires_grad_(True)
    steps = {name: make_step(layer, x) for name, layer in layers.items()}
    step_s = measure_interleaved(steps, repeats=repeats, warmup=warmup, device=device)
    return {
        "d": d, "r": r, "tokens": tokens, "relative_max_abs_diff_vs_peft": diffs, "step_median_s": step_s,
        "ratios": {
            "step_qlora_lorakit_over_peft_bnb": step_s["qlora_lorakit"] / step_s["peft_bnb"],
            "step_qlora_bitsandbytes_over_peft_bnb": step_s["qlora_bitsandbytes"] / step_s["peft_bnb"],
            "step_aa_noise": step_s["qlora_lorakit_again"] / step_s["qlora_lorakit"],
        },
    }


def markdown(report: dict[str, object]) -> str:
    cfg = report["config"]
    lines = header_lines(
        report, f"NF4 / QLoRA benchmark ({cfg['device']})", ("torch", "bitsandbytes", "peft", "lorakit"),
        f"blocksize {BLOCKSIZE}, double quantization on, bf16 weights for the codec; repeats {cfg['repeats']}, "
        f"warm-up {cfg['warmup']}, seed {cfg['seed']}",
    )
    lines += [
        "",
        "## Quantize / dequantize (throughput ratio lorakit / bitsandbytes; > 1 means lorakit is faster)",
        "",
        f"Target: dequantize throughput >= {TARGET_DEQUANT_THROUGHPUT}x bitsandbytes.",
        "",
        "| d x d | quantize x bnb | dequantize x bnb | layer kernel x bnb | A/A dequant | "
        "lorakit dequant (Mweights/s) | bnb dequant (Mweights/s) | packed bytes equal | DQ codes differing | "
        "dequant rel diff |",
        "|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|",
    ]
    for row in report["codec"]:
        q, t, c = row["ratios"], row["throughput_weights_per_s"]["dequantize"], row["check"]
        ok = "" if row["meets_target"]["dequantize_throughput_lorakit_over_bnb"] else " ✗"
        lines.append(
            f"| {row['d']} | {q['quantize_throughput_lorakit_over_bnb']:.3f} | "
            f"{q['dequantize_throughput_lorakit_over_bnb']:.3f}{ok} | "
            f"{q['dequantize_kernel_throughput_lorakit_over_bnb']:.3f} | {q['dequantize_aa_noise']:.3f} | "
            f"{t['lorakit'] / 1e6:.0f} | {t['bitsandbytes'] / 1e6:.0f} | {c['packed_bytes_equal']} | "
            f"{c['dq_codes_differing_fraction']:.2%} | {c['dequantized_rel_max_abs_diff']:.1e} |"
        )
    lines += [
        "",
        "## QLoRA layer: forward + backward + AdamW (time ratio; < 1 means the numerator is faster)",
        "",
        "| d | r | tokens | QLoRALinear(lorakit) / PEFT+bnb | QLoRALinear(bitsandbytes) / PEFT+bnb | A/A | "
        "lorakit ms | PEFT+bnb ms | max rel diff vs PEFT |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["step"]:
        q, s = row["ratios"], row["step_median_s"]
        lines.append(
            f"| {row['d']} | {row['r']} | {row['tokens']} | {q['step_qlora_lorakit_over_peft_bnb']:.3f} | "
            f"{q['step_qlora_bitsandbytes_over_peft_bnb']:.3f} | {q['step_aa_noise']:.3f} | "
            f"{1e3 * s['qlora_lorakit']:.1f} | {1e3 * s['peft_bnb']:.1f} | "
            f"{max(row['relative_max_abs_diff_vs_peft'].values()):.1e} |"
        )
    lines += ["", "✗ = misses the target. A/A = the same lorakit call timed twice (noise floor of every ratio)."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--codec-sizes", type=int, nargs="+", default=[1024, 4096], help="d of the [d, d] weights")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048], help="QLoRA layer widths d")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank r (alpha = 2r)")
    parser.add_argument("--tokens", type=int, default=512, help="rows of x per step")
    add_run_arguments(
        parser, device="cpu", repeats=10, warmup=2, threads=2,
        repeats_help="timed rounds (quantize uses a third of them)",
        quick_help="smoke test: d=256, 64 tokens, 2 repeats",
        out_help="result JSON (a .md is written next to it); default bench/results/nf4_<device>.json",
    )
    args = parser.parse_args(argv)
    for name in ("codec_sizes", "sizes"):
        if any(v <= 0 or v % BLOCKSIZE for v in getattr(args, name)):
            parser.error(f"--{name.replace('_', '-')} must be positive multiples of {BLOCKSIZE}")
    for name in ("rank", "tokens"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be a positive int")
    check_run_arguments(parser, args)
    if args.quick:
        args.codec_sizes, args.sizes, args.tokens, args.repeats, args.warmup = [256], [256], 64, 2, 1
    return args


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    codec = []
    for d in args.codec_sizes:
        row = bench_codec(d, device, args.repeats, args.warmup, args.seed)
        q = row["ratios"]
        print(f"codec d={d}: quantize x bnb {q['quantize_throughput_lorakit_over_bnb']:.3f}  dequantize x bnb "
              f"{q['dequantize_throughput_lorakit_over_bnb']:.3f}  layer kernel x bnb "
              f"{q['dequantize_kernel_throughput_lorakit_over_bnb']:.3f}  A/A {q['dequantize_aa_noise']:.3f}",
              flush=True)
        codec.append(row)
    steps = []
    for d in args.sizes:
        row = bench_step(d, args.rank, args.tokens, device, args.repeats, args.warmup, args.seed)
        q = row["ratios"]
        print(f"step d={d} r={args.rank}: lorakit/PEFT {q['step_qlora_lorakit_over_peft_bnb']:.3f}  bnb-backend/PEFT "
              f"{q['step_qlora_bitsandbytes_over_peft_bnb']:.3f}  A/A {q['step_aa_noise']:.3f}", flush=True)
        steps.append(row)
    info = machine_info(device)
    info["bitsandbytes"] = bnb.__version__
    report: dict[str, object] = {
        **report_head("nf4", argv),
        "config": {"device": str(device), "blocksize": BLOCKSIZE, "double_quant": True, "codec_dtype": "bf16",
                   "codec_sizes": args.codec_sizes, "sizes": args.sizes, "rank": args.rank, "alpha": "2r",
                   "tokens": args.tokens, "repeats": args.repeats, "warmup": args.warmup, "seed": args.seed,
                   "compute_dtype": "bf16", "adapter_dtype": "fp32", "input_dtype": "fp32",
                   "optimizer": "AdamW(lr=1e-4)", "loss": "out.float().square().mean()", "quick": args.quick,
                   "note": args.note, "targets": {"dequantize_throughput_lorakit_over_bnb": TARGET_DEQUANT_THROUGHPUT}},
        "machine": info,
        "codec": codec,
        "step": steps,
    }
    write_report(report, args.out, None if args.quick else f"nf4_{device.type}.json", markdown)
    return report


if __name__ == "__main__":
    main()
