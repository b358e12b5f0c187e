"""Benchmark: the Triton kernels of ``lorakit.kernels`` next to bitsandbytes, PyTorch and PEFT (notebook 15).

On a GPU (one command: ``python bench/kernels.py``; results to ``bench/results/kernels_<gpu>.{json,md}``), each
figure a ratio of medians from one interleaved run (:func:`lorakit.timing.measure_interleaved`):

* **memory bandwidth**: a device-to-device copy of 1 GiB (bytes read + written / time): the roofline every other
  figure is compared with, measured in the same run;
* **NF4 dequantize** (bf16 out, double-quantized absmax, blocksize 64): GB/s of the Triton kernel, of bitsandbytes'
  CUDA kernel and of lorakit's PyTorch decode, counting ``0.5 + 1/64 + 4/(64*256)`` bytes read and 2 written per
  weight. Targets: Triton >= 70% of the copy bandwidth and >= bitsandbytes' throughput;
* **fused 4-bit matmul** at 1-16 tokens (and 64, for the record): ``nf4_matmul`` against dequantize +
  ``torch.matmul`` (lorakit's PyTorch decode, which ``QLoRALinear(backend="lorakit")`` runs, and the Triton decode)
  and against bitsandbytes' ``Linear4bit`` forward. Target: >= 1.3x dequantize + matmul up to 16 tokens;
* **BGMV**: the LoRA delta of a decode batch with 32 adapters (rank 16) on a 4096-wide layer, Triton BGMV against
  ``lorakit.serving``'s gather + bmm (target >= 3x), and the whole layer (base + delta) against PEFT's mixed batch
  (``adapter_names=[...]``).

Each timed dequantize and matmul call runs the operation on several distinct weights in turn, together larger than
the GPU's L2 cache, so the bytes really come from HBM (the BGMV adapter bank, 8 MB, is reused as a server reuses it);
a second copy of the Triton call (A/A) gives the noise floor. Every pair is checked for agreement before it is timed.

On a machine without a GPU the script only checks correctness (through Triton's interpreter, small shapes), says
so, and writes nothing. ``--quick`` is a seconds-long smoke test on a GPU (writes nothing unless ``--out``).
"""

from __future__ import annotations

import argparse
import math
import re
import sys

# This file is bench/kernels.py, and bitsandbytes looks for an optional package named ``kernels`` (CPU kernels
# downloaded from the Hugging Face Hub): with bench/ first on sys.path it would import this script instead. Mark the
# name absent, so bitsandbytes falls back quietly as when that package is not installed (the course never downloads).
sys.modules.setdefault("kernels", None)

from lorakit._bnb import import_bitsandbytes, quiet_kernels_warning  # noqa: E402

quiet_kernels_warning()  # before common imports PEFT, which imports bitsandbytes

import torch  # noqa: E402
from common import (  # noqa: E402
    add_run_arguments,
    check_run_arguments,
    header_lines,
    machine_info,
    relative_max_abs_diff,
    report_head,
    require_agreement,
    resolve_device,
    write_report,
)

from lorakit import nf4  # noqa: E402
from lorakit.kernels import available, interpreting  # noqa: E402
from lorakit.kernels.roofline import dequant_bytes_per_weight  # noqa: E402
from lorakit.nf4 import kernels as torch_decode  # noqa: E402
from lorakit.qlora import bnb_linear4bit_from_linear  # noqa: E402
from lorakit.timing import measure_interleaved  # noqa: E402

TARGETS = {"dequant_fraction_of_copy_bandwidth": 0.7, "dequant_triton_over_bnb": 1.0,
           "fused_over_dequant_matmul_max16": 1.3, "bgmv_triton_over_gather_bmm": 3.0}
BLOCKSIZE = 64


# ------------------------------------------------------------------------------------------ helpers
def _weights(shape: tuple[int, int], seed: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (0.02 * torch.randn(shape, generator=g)).to(device, torch.bfloat16)  # as transformers loads a model


def _copies(nbytes: int, device: torch.device, at_most: int = 16) -> int:
    """How many distinct weights a timed call cycles through so that together they exceed 3x the L2 cache."""
    if device.type != "cuda":
        return 1
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 << 20)
    return max(1, min(at_most, math.ceil(3 * l2 / max(nbytes, 1))))


def _cycled(fn, states: list) -> callable:
    """A call that runs ``fn(state)`` for every state (the time per operation is the median / len(states))."""
    def run() -> None:
        for state in states:
            fn(state)
    return run


def _per_op(medians: dict[str, float], n: int) -> dict[str, float]:
    return {k: v / n for k, v in medians.items()}


def _state(q: nf4.QuantizedTensor) -> dict[str, object]:
    dq = q.absmax
    return {"packed": q.packed, "codes": dq.codes, "scales": dq.scales, "offset": torch.tensor(
        dq.offset, dtype=torch.float32, device=q.device), "code": q.code, "table": torch_decode.pair_table(q.code),
        "dynamic": nf4.dynamic_code().to(q.device), "shape": tuple(q.shape)}


def _triton_decode(s: dict, kd, dtype: torch.dtype) -> torch.Tensor:
    return kd.decode_weight(s["packed"], s["codes"], s["code"], s["shape"], BLOCKSIZE, dtype, s["scales"],
                            s["offset"], s["dynamic"])


def _torch_decode(s: dict, dtype: torch.dtype) -> torch.Tensor:
    return torch_decode.decode_weight(s["packed"], s["codes"], s["table"], s["shape"], BLOCKSIZE, dtype,
                                      s["scales"], s["offset"], s["dynamic"])


# ------------------------------------------------------------------------------------------ measurements
def bench_bandwidth(device: torch.device, repeats: int, warmup: int, nbytes: int = 1 << 30) -> dict[str, float]:
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    s = measure_interleaved({"copy": lambda: dst.copy_(src)}, repeats=repeats, warmup=warmup, device=device)
    return {"bytes": 2 * nbytes, "median_s": s["copy"], "GBps": 2 * nbytes / s["copy"] / 1e9}


def bench_dequant(d: int, device: torch.device, repeats: int, warmup: int, seed: int, bandwidth: float,
                  dtype: torch.dtype = torch.bfloat16) -> dict:
    from lorakit.kernels import nf4_dequant as kd

    bnb = import_bitsandbytes()
    n_copies = _copies(int(d * d * dequant_bytes_per_weight()), device)
    states, bnb_states = [], []
    for c in range(n_copies):
        w = _weights((d, d), seed + c, device)
        states.append(_state(nf4.quantize_nf4(w, BLOCKSIZE, double_quant=True)))
        bnb_states.append(bnb.functional.quantize_4bit(w, blocksize=BLOCKSIZE, compress_statistics=True,
                                                       quant_type="nf4"))
    s0, (p0, st0) = states[0], bnb_states[0]
    ours = _triton_decode(s0, kd, dtype)
    check = {"triton_equals_lorakit_bits": bool(torch.equal(ours, _torch_decode(s0, dtype))),
             "packed_equals_bnb": bool(torch.equal(s0["packed"], p0.view(-1))),
             "triton_equals_bnb_bits": bool(torch.equal(_triton_decode(s0, kd, st0.dtype).view(-1),
                                                        bnb.functional.dequantize_4bit(p0, st0).view(-1)))}
    medians = _per_op(measure_interleaved({
        "triton": _cycled(lambda s: _triton_decode(s, kd, dtype), states),
        "bitsandbytes": _cycled(lambda ps: bnb.functional.dequantize_4bit(*ps), bnb_states),
        "lorakit_pytorch": _cycled(lambda s: _torch_decode(s, dtype), states),
        "triton_again": _cycled(lambda s: _triton_decode(s, kd, dtype), states),
    }, repeats=repeats, warmup=warmup, device=device), n_copies)
    moved = d * d * dequant_bytes_per_weight()
    gbps = {k: moved / v / 1e9 for k, v in medians.items()}
    ratios = {"triton_fraction_of_copy_bandwidth": gbps["triton"] / bandwidth,
              "bnb_fraction_of_copy_bandwidth": gbps["bitsandbytes"] / bandwidth,
              "triton_over_bnb": medians["bitsandbytes"] / medians["triton"],
              "triton_over_lorakit_pytorch": medians["lorakit_pytorch"] / medians["triton"],
              "aa_noise": medians["triton_again"] / medians["triton"]}
    return {"d": d, "copies": n_copies, "bytes_per_weight": dequant_bytes_per_weight(), "check": check,
            "median_s": medians, "GBps": gbps, "ratios": ratios,
            "meets_target": {"fraction_of_copy_bandwidth": ratios["triton_fraction_of_copy_bandwidth"]
                             >= TARGETS["dequant_fraction_of_copy_bandwidth"],
                             "triton_over_bnb": ratios["triton_over_bnb"] >= TARGETS["dequant_triton_over_bnb"]}}


def bench_matmul(n: int, k: int, tokens: int, device: torch.device, repeats: int, warmup: int, seed: int,
                 bandwidth: float, dtype: torch.dtype = torch.bfloat16) -> dict:
    from lorakit.kernels import nf4_dequant as kd
    from lorakit.kernels.nf4_matmul import nf4_matmul

    n_copies = _copies(int(n * k * dequant_bytes_per_weight(0)), device)
    states, layers = [], []
    for c in range(n_copies):
        w = _weights((n, k), seed + c, device)
        states.append(_state(nf4.quantize_nf4(w, BLOCKSIZE, double_quant=True)))
        shell = torch.nn.Linear(k, n, bias=False, device="meta")
        layers.append(bnb_linear4bit_from_linear(shell, BLOCKSIZE, True, dtype, weight=w).eval())
    x = torch.randn(tokens, k, generator=torch.Generator().manual_seed(seed)).to(device, dtype)

    def fused(s):
        return nf4_matmul(x, s["packed"], s["codes"], s["code"], s["shape"], BLOCKSIZE, dtype, None, s["scales"],
                          s["offset"], s["dynamic"])

    def torch_two_step(s):
        return x @ _torch_decode(s, dtype).t()

    def triton_two_step(s):
        return x @ _triton_decode(s, kd, dtype).t()

    def bnb_layer(layer):
        with torch.no_grad():
            return layer(x)

    errors = relative_max_abs_diff({"fused_vs_torch_two_step": (fused(states[0]), torch_two_step(states[0])),
                                    "bnb_vs_torch_two_step": (bnb_layer(layers[0]), torch_two_step(states[0]))})
    require_agreement(errors, 2e-2, "fused 4-bit matmul and dequantize + matmul")
    medians = _per_op(measure_interleaved({
        "fused_triton": _cycled(fused, states),
        "dequant_pytorch_matmul": _cycled(torch_two_step, states),
        "dequant_triton_matmul": _cycled(triton_two_step, states),
        "bnb_linear4bit": _cycled(bnb_layer, layers),
        "fused_triton_again": _cycled(fused, states),
    }, repeats=repeats, warmup=warmup, device=device), n_copies)
    weight_bytes = n * k * dequant_bytes_per_weight(0)
    ratios = {"fused_over_dequant_pytorch_matmul": medians["dequant_pytorch_matmul"] / medians["fused_triton"],
              "fused_over_dequant_triton_matmul": medians["dequant_triton_matmul"] / medians["fused_triton"],
              "fused_over_bnb_linear4bit": medians["bnb_linear4bit"] / medians["fused_triton"],
              "fused_fraction_of_copy_bandwidth": weight_bytes / medians["fused_triton"] / 1e9 / bandwidth,
              "aa_noise": medians["fused_triton_again"] / medians["fused_triton"]}
    meets = None
    if tokens <= 16:
        meets = min(ratios["fused_over_dequant_pytorch_matmul"], ratios["fused_over_dequant_triton_matmul"]) \
            >= TARGETS["fused_over_dequant_matmul_max16"]
    return {"n": n, "k": k, "tokens": tokens, "copies": n_copies, "relative_max_abs_diff": errors,
            "median_s": medians, "ratios": ratios, "meets_target": meets}


def bench_bgmv(n_adapters: int, rank: int, d: int, tokens: int, device: torch.device, repeats: int, warmup: int,
               seed: int, dtype: torch.dtype = torch.bfloat16) -> dict:
    import peft

    from lorakit.kernels import bgmv as kb
    from lorakit.serving import kernels as serving

    g = torch.Generator().manual_seed(seed)
    A = (torch.randn(n_adapters, rank, d, generator=g) / d**0.5).to(device, dtype)
    B = (torch.randn(n_adapters, d, rank, generator=g) / rank**0.5).to(device, dtype)
    x = torch.randn(tokens, d, generator=g).to(device, dtype)
    indices = torch.randint(0, n_adapters, (tokens,), generator=g).to(device)

    class One(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(d, d, bias=False)

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return self.proj(inputs)

    names = [f"task{i}" for i in range(n_adapters)]
    model = peft.get_peft_model(One(), peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=["proj"]), names[0])
    for name in names[1:]:
        model.add_adapter(name, peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=["proj"]))
    layer = model.base_model.model.proj
    with torch.no_grad():
        for i, name in enumerate(names):  # alpha = r: scaling 1, so B' = B
            layer.lora_A[name].weight.copy_(A[i].float())
            layer.lora_B[name].weight.copy_(B[i].float())
    model = model.to(device, dtype).eval()
    row_names = [names[i] for i in indices.tolist()]
    base_w = layer.base_layer.weight

    def triton_delta():
        return kb.bgmv_expand(kb.bgmv_shrink(x, A, indices), B, indices)

    def torch_delta():
        return serving.bgmv(x, A, B, indices)

    def peft_layer():
        with torch.no_grad():
            return model(x, adapter_names=row_names)

    errors = relative_max_abs_diff({"triton_vs_gather_bmm": (triton_delta(), torch_delta()),
                                    "triton_layer_vs_peft": (x @ base_w.t() + triton_delta(), peft_layer())})
    require_agreement(errors, 3e-2, "BGMV kernels and PEFT's mixed batch")
    medians = measure_interleaved({
        "triton_delta": triton_delta, "gather_bmm_delta": torch_delta,
        "triton_layer": lambda: x @ base_w.t() + triton_delta(), "peft_mixed_batch_layer": peft_layer,
        "triton_delta_again": triton_delta,
    }, repeats=repeats, warmup=warmup, device=device)
    ratios = {"triton_over_gather_bmm": medians["gather_bmm_delta"] / medians["triton_delta"],
              "triton_layer_over_peft_mixed_batch": medians["peft_mixed_batch_layer"] / medians["triton_layer"],
              "aa_noise": medians["triton_delta_again"] / medians["triton_delta"]}
    return {"adapters": n_adapters, "rank": rank, "d": d, "tokens": tokens, "relative_max_abs_diff": errors,
            "median_s": medians, "ratios": ratios,
            "meets_target": ratios["triton_over_gather_bmm"] >= TARGETS["bgmv_triton_over_gather_bmm"]}


# ------------------------------------------------------------------------------------------ CPU: correctness only
def check_correctness_on_cpu() -> dict[str, bool]:
    """Every kernel against its reference on small shapes through the interpreter (what a CPU can check)."""
    from lorakit.kernels import bgmv as kb
    from lorakit.kernels import nf4_dequant as kd
    from lorakit.kernels.nf4_matmul import nf4_matmul
    from lorakit.kernels.reference import nf4_matmul_reference
    from lorakit.serving import kernels as serving

    g = torch.Generator().manual_seed(0)
    q = nf4.quantize_nf4(0.02 * torch.randn(48, 160, generator=g), BLOCKSIZE, double_quant=True)
    state = (q.packed, q.absmax.codes, q.code, (48, 160), BLOCKSIZE, torch.float16)
    nested = {"nested_absmax": q.absmax.scales, "nested_offset": q.absmax.offset}
    x = torch.randn(5, 160, generator=g)
    A, B = torch.randn(4, 8, 160, generator=g) / 13, torch.randn(4, 48, 8, generator=g) / 3
    idx = torch.tensor([2, -1, 0, 3, 3])
    y = nf4_matmul(x, *state, None, **nested)
    want = nf4_matmul_reference(x, *state, None, **nested)
    delta = kb.bgmv_expand(kb.bgmv_shrink(x, A, idx), B, idx)
    return {
        "nf4_dequant_bit_for_bit": bool(torch.equal(kd.dequantize_nf4(q, torch.float16),
                                                    nf4.dequantize_nf4(q, torch.float16))),
        "nf4_matmul_close": bool(((y.float() - want.float()).abs().max() <= 2e-3 * want.float().abs().max()).item()),
        "bgmv_close": bool(torch.allclose(delta, serving.bgmv(x, A, B, idx), rtol=1e-5, atol=1e-5)),
    }


# ------------------------------------------------------------------------------------------ report
def gpu_slug(name: str) -> str:
    """``"NVIDIA H200"`` -> ``"nvidia_h200"`` (the result file's name)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def markdown(report: dict) -> str:
    lines = header_lines(report, "Triton kernels vs bitsandbytes, PyTorch and PEFT (lorakit.kernels)",
                         ["torch", "triton", "bitsandbytes", "peft", "lorakit"],
                         "bf16, NF4 blocksize 64 with double quantization; ratios > 1 mean Triton is faster")
    bw = report["bandwidth"]
    lines += ["", f"Measured copy bandwidth (1 GiB device-to-device, read + write): **{bw['GBps']:.0f} GB/s**.", "",
              "## NF4 dequantize (bf16 out)", "",
              "| d | Triton GB/s | bnb GB/s | lorakit PyTorch GB/s | Triton / copy bw | Triton x bnb | A/A | "
              "bits equal (lorakit, bnb) |", "|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for row in report["dequant"]:
        q, gb, c, ok = row["ratios"], row["GBps"], row["check"], row["meets_target"]
        lines.append(f"| {row['d']} | {gb['triton']:.0f} | {gb['bitsandbytes']:.0f} | {gb['lorakit_pytorch']:.0f} | "
                     f"{q['triton_fraction_of_copy_bandwidth']:.2f}{'' if ok['fraction_of_copy_bandwidth'] else ' ✗'}"
                     f" | {q['triton_over_bnb']:.2f}{'' if ok['triton_over_bnb'] else ' ✗'} | {q['aa_noise']:.3f} | "
                     f"{c['triton_equals_lorakit_bits']}, {c['triton_equals_bnb_bits']} |")
    lines += ["", "## Fused 4-bit matmul (time ratios: the other / fused)", "",
              "| N x K | tokens | x (PyTorch dequant + matmul) | x (Triton dequant + matmul) | x bnb Linear4bit | "
              "weight bytes / copy bw | A/A | fused us |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["matmul"]:
        q = row["ratios"]
        flag = "" if row["meets_target"] in (None, True) else " ✗"
        lines.append(f"| {row['n']} x {row['k']} | {row['tokens']} | {q['fused_over_dequant_pytorch_matmul']:.2f}"
                     f"{flag} | {q['fused_over_dequant_triton_matmul']:.2f} | {q['fused_over_bnb_linear4bit']:.2f} | "
                     f"{q['fused_fraction_of_copy_bandwidth']:.2f} | {q['aa_noise']:.3f} | "
                     f"{1e6 * row['median_s']['fused_triton']:.1f} |")
    lines += ["", "## BGMV (time ratios: the other / Triton)", "",
              "| adapters | rank | d | tokens | delta: x gather + bmm | layer: x PEFT mixed batch | A/A |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["bgmv"]:
        q = row["ratios"]
        lines.append(f"| {row['adapters']} | {row['rank']} | {row['d']} | {row['tokens']} | "
                     f"{q['triton_over_gather_bmm']:.2f}{'' if row['meets_target'] else ' ✗'} | "
                     f"{q['triton_layer_over_peft_mixed_batch']:.2f} | {q['aa_noise']:.3f} |")
    lines += ["", f"Targets: {report['config']['targets']}. ✗ = misses its target. A/A = the same Triton call timed "
              "twice (the noise floor of every ratio)."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dequant-sizes", type=int, nargs="+", default=[4096, 8192], help="d of [d, d] weights")
    parser.add_argument("--matmul-shapes", nargs="+", default=["4096x4096", "11008x4096"], help="N x K weights")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 4, 16, 64], help="rows of x (matmul)")
    parser.add_argument("--bgmv-tokens", type=int, nargs="+", default=[32, 128], help="rows of the BGMV batch")
    parser.add_argument("--adapters", type=int, default=32, help="adapters in the BGMV stack")
    add_run_arguments(parser, device="auto", repeats=50, warmup=5, threads=None,
                      quick_help="smoke test on a GPU: one small case each, 5 repeats, writes nothing",
                      out_help="result JSON (.md next to it); default bench/results/kernels_<gpu>.json")
    args = parser.parse_args(argv)
    check_run_arguments(parser, args)
    try:
        args.matmul_shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.matmul_shapes]
    except ValueError:
        parser.error("--matmul-shapes must look like 4096x4096")
    if args.quick:
        args.dequant_sizes, args.matmul_shapes, args.tokens, args.bgmv_tokens = [2048], [(2048, 2048)], [1, 16], [32]
        args.repeats, args.warmup = 5, 2
    return args


def main(argv: list[str] | None = None) -> dict[str, object] | None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if not available():
        raise SystemExit("Triton is not installed: pip install 'lorakit[gpu]' (nothing to benchmark)")
    if device.type != "cuda" or interpreting():
        checks = check_correctness_on_cpu()
        print(f"no CUDA device: correctness only, through the Triton interpreter: {checks}")
        print("nothing was timed and nothing was written (the speed figures need a GPU)")
        if not all(checks.values()):
            raise SystemExit("a kernel disagrees with its reference")
        return None
    bw = bench_bandwidth(device, args.repeats, args.warmup)
    print(f"copy bandwidth {bw['GBps']:.0f} GB/s", flush=True)
    dequant = []
    for d in args.dequant_sizes:
        row = bench_dequant(d, device, args.repeats, args.warmup, args.seed, bw["GBps"])
        print(f"dequant d={d}: Triton {row['GBps']['triton']:.0f} GB/s "
              f"({row['ratios']['triton_fraction_of_copy_bandwidth']:.2f} of copy), x bnb "
              f"{row['ratios']['triton_over_bnb']:.2f}, A/A {row['ratios']['aa_noise']:.3f}", flush=True)
        dequant.append(row)
    matmul = []
    for n, k in args.matmul_shapes:
        for tokens in args.tokens:
            row = bench_matmul(n, k, tokens, device, args.repeats, args.warmup, args.seed, bw["GBps"])
            q = row["ratios"]
            print(f"matmul {n}x{k} tokens={tokens}: x(dequant+matmul) {q['fused_over_dequant_pytorch_matmul']:.2f}"
                  f", x bnb {q['fused_over_bnb_linear4bit']:.2f}, A/A {q['aa_noise']:.3f}", flush=True)
            matmul.append(row)
    bgmv = []
    for tokens in args.bgmv_tokens:
        row = bench_bgmv(args.adapters, 16, 4096, tokens, device, args.repeats, args.warmup, args.seed)
        print(f"bgmv tokens={tokens}: x gather+bmm {row['ratios']['triton_over_gather_bmm']:.2f}, layer x PEFT "
              f"{row['ratios']['triton_layer_over_peft_mixed_batch']:.2f}", flush=True)
        bgmv.append(row)
    import triton

    info = machine_info(device)
    info["bitsandbytes"] = import_bitsandbytes().__version__
    info["triton"] = triton.__version__
    report: dict[str, object] = {
        **report_head("kernels", argv),
        "config": {"device": str(device), "dtype": "bf16", "blocksize": BLOCKSIZE, "double_quant": True,
                   "dequant_sizes": args.dequant_sizes, "matmul_shapes": [list(s) for s in args.matmul_shapes],
                   "tokens": args.tokens, "bgmv_tokens": args.bgmv_tokens, "adapters": args.adapters, "rank": 16,
                   "repeats": args.repeats, "warmup": args.warmup, "seed": args.seed, "quick": args.quick,
                   "note": args.note, "targets": TARGETS},
        "machine": info, "bandwidth": bw, "dequant": dequant, "matmul": matmul, "bgmv": bgmv,
    }
    name = None if args.quick else f"kernels_{gpu_slug(info['device_name'])}.json"
    write_report(report, args.out, name, markdown)
    return report


if __name__ == "__main__":
    main()
