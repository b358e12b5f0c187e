"""Benchmark: serving many LoRA adapters on one base, seven ways, in one run (see bench/README.md, notebook 12).

One seeded Hugging Face ``LlamaForCausalLM`` (built from a config: no download) serves N random adapters
(:func:`lorakit.serving.random_adapter`, nonzero ``B``) on ``--targets``. A *scenario* is a batch of requests,
one adapter each, drawn from a popularity law (uniform or Zipf); every variant does the same work on it:

* ``backbone``: the base model alone on the batch (the floor; ``backbone_again`` times it twice: the A/A ratio);
* ``merged``: one merged model per adapter (``W + s B A`` precomputed), requests grouped by adapter, one forward
  per group (the weights are swapped in by reference, so this costs what N resident merged copies would);
* ``one_at_a_time``: one request at a time, its adapter swapped into an unmerged lorakit LoRA model (by
  reference: the cheapest possible swap), a forward per request;
* ``peft_mixed``: PEFT with the N adapters loaded, ``model(input_ids, adapter_names=[...])``;
* ``masked``: lorakit's naive loop, every adapter in the batch over the whole batch, masked;
* ``bgmv``: lorakit gather + bmm (padded bank); ``sgmv``: lorakit segmented (padded bank, rows sorted);
* with mixed ranks also ``bgmv_grouped`` / ``sgmv_grouped`` (the grouped-by-rank bank: no padded FLOPs).

Before timing, every variant's logits are checked against ``bgmv``'s (relative max abs difference). Timings
come from :func:`lorakit.timing.measure_interleaved` (round-robin, medians), so the ratios of one scenario are
measured under the same machine load. Decode is one token a row (no KV cache: the linear layers, which is where
the variants differ, see what a decode step sees); prefill is ``--prefill-len`` tokens a row.

At the target scenario (N=32, batch 64, decode, uniform, equal ranks) the script also times the pieces of one
served layer in isolation (base matmul, BGMV's gathers, BGMV's bmm's, SGMV's per-segment matmuls): where the
CPU misses a target, that breakdown says why. ``--quick`` is a seconds-long smoke test that writes nothing.
"""

from __future__ import annotations

import argparse
import copy
import gc
import time
from dataclasses import asdict, dataclass
from functools import partial

import peft
import torch
import transformers
from common import (
    DTYPES,
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
from torch import nn

from lorakit import LoRAConfig, apply_lora, lora_layers
from lorakit.memory import cuda_peak_bytes, tensor_bytes
from lorakit.peft.io import PEFT_PREFIX
from lorakit.serving import AdapterBank, MultiLoRAModel, random_adapter, request_mix
from lorakit.serving import kernels as K
from lorakit.timing import measure_interleaved

#: The issue's targets at N=32, batch 64, decode: speed-up over one-at-a-time, over PEFT, and cost over the backbone.
TARGETS = {"over_one_at_a_time": 5.0, "over_peft_mixed": 1.5, "backbone_ratio": 1.5}
TARGET_POINT = {"n_adapters": 32, "batch": 64, "mode": "decode", "popularity": "uniform", "ranks": "equal"}


@dataclass(frozen=True)
class Scenario:
    n_adapters: int
    batch: int
    mode: str  # "decode" | "prefill"
    popularity: str  # "uniform" | "zipf"
    ranks: str  # "equal" | "mixed"

    @property
    def name(self) -> str:
        return f"N={self.n_adapters} b={self.batch} {self.mode} {self.popularity} {self.ranks}"


def sweep(quick: bool) -> list[Scenario]:
    """One factor at a time around the target point, plus the N sweep in both modes (a full factorial would take
    hours on 2 cores)."""
    if quick:
        return [Scenario(8, 8, "decode", "uniform", "equal"), Scenario(8, 4, "prefill", "zipf", "mixed"),
                Scenario(1, 8, "decode", "uniform", "equal")]
    out = []
    for n in (1, 8, 32, 128):  # N sweep, decode and prefill
        out += [Scenario(n, 64, "decode", "uniform", "equal"), Scenario(n, 16, "prefill", "uniform", "equal")]
    for b in (8, 16, 32, 128):  # batch sweep at the target N
        out.append(Scenario(32, b, "decode", "uniform", "equal"))
    for n in (8, 32, 128):  # popularity and ranks, both modes
        for mode, b in (("decode", 64), ("prefill", 16)):
            out += [Scenario(n, b, mode, "zipf", "equal"), Scenario(n, b, mode, "uniform", "mixed")]
    return out


# ------------------------------------------------------------------------------------------ the models
def build_base(args: argparse.Namespace, dtype: torch.dtype, device: torch.device) -> nn.Module:
    cfg = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=max(64, args.prefill_len),
    )
    torch.manual_seed(args.seed)
    return transformers.LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()


def adapter_ranks(kind: str, n: int, args: argparse.Namespace) -> list[int]:
    return [args.rank] * n if kind == "equal" else [args.mixed_ranks[i % len(args.mixed_ranks)] for i in range(n)]


class Servers:
    """Every variant's model for one rank kind, built once with the largest N (smaller N use the first adapters)."""

    def __init__(self, base: nn.Module, kind: str, n_max: int, args: argparse.Namespace) -> None:
        self.base, self.kind, self.targets = base, kind, list(args.targets)
        self.ranks = adapter_ranks(kind, n_max, args)
        self.adapters = [random_adapter(base, r, self.targets, seed=args.seed + 1 + i)
                         for i, r in enumerate(self.ranks)]
        max_rank = max(self.ranks)
        self.served = {}
        layouts = ("padded",) if kind == "equal" else ("padded", "grouped")
        for layout in layouts:
            bank = AdapterBank(base, self.targets, max_rank=max_rank, capacity=n_max, layout=layout)
            for i, (tensors, config) in enumerate(self.adapters):
                bank.add_tensors(f"a{i}", tensors, config)
            self.served[layout] = MultiLoRAModel(copy.deepcopy(base), bank)
        self.peft = self._peft_model()
        # one-at-a-time: an unmerged lorakit model whose A, B are swapped per request (by reference)
        self.swap_model = apply_lora(copy.deepcopy(base), LoRAConfig(r=max_rank, target_modules=self.targets))
        self.swap_layers = lora_layers(self.swap_model)
        self.device = next(base.parameters()).device
        self.swap_tensors = [{k: v.to(self.device) for k, v in t.items()} for t, _ in self.adapters]
        # merged: a model whose target weights are replaced by precomputed merged ones
        self.merged_model = copy.deepcopy(base)
        self.merged_layers = {n: self.merged_model.get_submodule(n) for n in self.swap_layers}
        self.merged_cache: dict[int, dict[str, nn.Parameter]] = {}

    def _peft_model(self) -> nn.Module:
        model = None
        for i, (_, config) in enumerate(self.adapters):
            pcfg = peft.LoraConfig(r=config.r, lora_alpha=config.alpha, target_modules=self.targets)
            if model is None:
                model = peft.get_peft_model(copy.deepcopy(self.base), pcfg, adapter_name="a0")
            else:
                model.add_adapter(f"a{i}", pcfg)
        with torch.no_grad():
            for name, module in model.base_model.model.named_modules():
                if hasattr(module, "lora_A") and isinstance(module.lora_A, nn.ModuleDict) and module.lora_A:
                    for i, (tensors, _) in enumerate(self.adapters):
                        module.lora_A[f"a{i}"].weight.copy_(tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"])
                        module.lora_B[f"a{i}"].weight.copy_(tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"])
        return model.eval()

    # ---------------------------------------------------------------------------------- variants
    def merged_weights(self, adapter: int) -> dict[str, nn.Parameter]:
        if adapter not in self.merged_cache:
            tensors, config = self.adapters[adapter]
            out = {}
            for name in self.merged_layers:
                a = tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"].to(self.device, torch.float32)
                b = tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"].to(self.device, torch.float32)
                w = self.base.get_submodule(name).weight
                out[name] = nn.Parameter((w.float() + config.scaling * (b @ a)).to(w.dtype), requires_grad=False)
            self.merged_cache[adapter] = out
        return self.merged_cache[adapter]

    def run_merged(self, ids: torch.Tensor, groups: dict[int, torch.Tensor]) -> torch.Tensor:
        out = None
        for adapter, rows in groups.items():
            for name, weight in self.merged_weights(adapter).items():
                self.merged_layers[name].weight = weight
            part = self.merged_model(ids.index_select(0, rows)).logits
            out = part.new_empty((ids.shape[0], *part.shape[1:])) if out is None else out
            out.index_copy_(0, rows, part)
        return out

    def run_one_at_a_time(self, ids: torch.Tensor, adapter_ids: list[int]) -> torch.Tensor:
        outs = []
        for row, adapter in enumerate(adapter_ids):
            tensors, scaling = self.swap_tensors[adapter], self.adapters[adapter][1].scaling
            for name, layer in self.swap_layers.items():  # the swap: A, B and scaling by reference
                layer.lora_A.data = tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"]
                layer.lora_B.data = tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"]
                layer.scaling = scaling
            outs.append(self.swap_model(ids[row:row + 1]).logits)
        return torch.cat(outs)

    def release_merged(self) -> None:
        self.merged_cache.clear()


def variants(servers: Servers, ids: torch.Tensor, adapter_ids: list[int]) -> dict[str, object]:
    """``{variant: () -> logits}`` for one batch (the same work for each)."""
    dev = ids.device
    names = [f"a{a}" for a in adapter_ids]
    groups = {a: torch.tensor([i for i, x in enumerate(adapter_ids) if x == a], device=dev)
              for a in sorted(set(adapter_ids))}

    def served(layout: str, kernel: str) -> torch.Tensor:
        model = servers.served[layout]
        model.kernel = kernel
        return model(ids, adapter_ids=adapter_ids).logits

    fns = {
        "backbone": lambda: servers.base(ids).logits,
        "backbone_again": lambda: servers.base(ids).logits,
        "merged": partial(servers.run_merged, ids, groups),
        "one_at_a_time": partial(servers.run_one_at_a_time, ids, adapter_ids),
        "peft_mixed": lambda: servers.peft(input_ids=ids, adapter_names=names).logits,
        "masked": partial(served, "padded", "masked"),
        "bgmv": partial(served, "padded", "bgmv"),
        "sgmv": partial(served, "padded", "sgmv"),
    }
    if "grouped" in servers.served:
        fns["bgmv_grouped"] = partial(served, "grouped", "bgmv")
        fns["sgmv_grouped"] = partial(served, "grouped", "sgmv")
    return fns


def memory_bytes(servers: Servers, n: int, batch_tokens: int) -> dict[str, int]:
    """Resident bytes each deployment needs for N adapters (weights and adapters; activations excluded)."""
    base = tensor_bytes(servers.base.parameters())
    exact = sum(tensor_bytes(t.values()) for t, _ in servers.adapters[:n])
    bank = servers.served["padded"].bank
    slot = bank.adapter_nbytes("a0")
    out = {
        "backbone": base,
        "merged": n * base,  # one full merged copy per adapter
        "one_at_a_time": base + exact,
        "peft_mixed": base + exact,
        "lorakit_padded": base + n * slot,
        # BGMV's transient copy: the gathered A and B of the widest served layer
        "bgmv_gather_workspace": batch_tokens * bank.max_rank * max(i + o for i, o in bank.shapes.values())
        * bank._element_size(),
    }
    if "grouped" in servers.served:
        grouped = servers.served["grouped"].bank
        out["lorakit_grouped"] = base + sum(grouped.adapter_nbytes(f"a{i}") for i in range(n))
    return out


# ------------------------------------------------------------------------------------------ one scenario
def run_scenario(sc: Scenario, servers: Servers, args: argparse.Namespace, device: torch.device) -> dict:
    seq = 1 if sc.mode == "decode" else args.prefill_len
    gen = torch.Generator().manual_seed(args.seed + 7)
    ids = torch.randint(0, args.vocab, (sc.batch, seq), generator=gen).to(device)
    adapter_ids = request_mix(sc.batch, sc.n_adapters, sc.popularity, seed=args.seed + sc.n_adapters + sc.batch)
    fns = variants(servers, ids, adapter_ids)
    with torch.inference_mode():
        outs = {name: fn() for name, fn in fns.items()}
        ref = outs["bgmv"]
        errors = relative_max_abs_diff({n: (o, ref) for n, o in outs.items() if not n.startswith("backbone")})
        effect = relative_max_abs_diff({"adapters_vs_backbone": (outs["backbone"], ref)})["adapters_vs_backbone"]
        del outs
        require_agreement(errors, 1e-4 if ref.dtype == torch.float32 else 5e-2, f"variants in {sc.name}")
        medians = measure_interleaved(fns, repeats=args.repeats, warmup=args.warmup, device=device)
        peaks = {n: cuda_peak_bytes(f, device) for n, f in fns.items()} if device.type == "cuda" else None
    servers.release_merged()
    tokens = sc.batch * seq
    back = medians["backbone"]
    row = {
        **asdict(sc), "name": sc.name, "seq": seq, "tokens": tokens, "distinct_adapters": len(set(adapter_ids)),
        "median_s": medians,
        "tokens_per_s": {n: tokens / t for n, t in medians.items()},
        "over_backbone": {n: t / back for n, t in medians.items()},
        "aa_noise": medians["backbone_again"] / back,
        "speedup_of": {k: {"over_one_at_a_time": medians["one_at_a_time"] / medians[k],
                           "over_peft_mixed": medians["peft_mixed"] / medians[k]}
                       for k in fns if k in ("bgmv", "sgmv", "masked", "bgmv_grouped", "sgmv_grouped")},
        "relative_max_abs_diff_vs_bgmv": errors, "adapters_change_logits_by": effect,
        "memory_bytes": memory_bytes(servers, sc.n_adapters, tokens),
    }
    if peaks is not None:
        row["cuda_peak_bytes"] = peaks
    q = row["over_backbone"]
    print(f"{sc.name:40s} distinct {row['distinct_adapters']:3d} | over backbone: "
          + "  ".join(f"{n} {q[n]:.2f}" for n in fns if n != "backbone") + f" | A/A {row['aa_noise']:.3f}", flush=True)
    return row


def breakdown(servers: Servers, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Median seconds of the pieces of one served layer at the target point (decode, b=64, N=32, uniform)."""
    bank = servers.served["padded"].bank
    name = next(iter(bank.shapes))
    base_layer = servers.base.get_submodule(name)
    b = TARGET_POINT["batch"]
    x = torch.randn(b, base_layer.in_features, generator=torch.Generator().manual_seed(3)).to(device, bank.dtype)
    slots = request_mix(b, TARGET_POINT["n_adapters"], "uniform", seed=args.seed)
    plan = bank.plan(slots).for_tokens(1)
    A, B = bank.storage.A[name], bank.storage.B[name]
    idx = plan.indices
    gA, gB = A.index_select(0, idx), B.index_select(0, idx)
    v = K.bgmv_shrink(x, A, idx)
    xs = x.index_select(0, plan.perm) if plan.perm is not None else x
    fns = {
        "base_linear": lambda: base_layer(x),
        "bgmv_gather_A_and_B": lambda: (A.index_select(0, idx), B.index_select(0, idx)),
        "bgmv_bmm_shrink_and_expand": lambda: (torch.bmm(x.unsqueeze(1), gA.transpose(1, 2)),
                                               torch.bmm(v.unsqueeze(1), gB.transpose(1, 2))),
        "bgmv_total": lambda: K.bgmv(x, A, B, idx),
        "sgmv_segment_matmuls": lambda: K.sgmv(xs, A, B, plan.segments),
        "sgmv_total_with_sort": lambda: bank.delta(name, x, plan, "sgmv"),
        "plan_build": lambda: bank.plan(slots).for_tokens(1),
    }
    with torch.inference_mode():
        medians = measure_interleaved(fns, repeats=max(5, 3 * args.repeats), warmup=args.warmup + 1, device=device)
    out = {k: v for k, v in medians.items()}
    out["segments"] = len(plan.segments)
    out["layer"] = name
    return out


# ------------------------------------------------------------------------------------------ report
def target_verdicts(rows: list[dict]) -> dict[str, dict]:
    row = next((r for r in rows if all(r[k] == v for k, v in TARGET_POINT.items())), None)
    if row is None:
        return {}
    verdicts = {}
    for kernel in ("bgmv", "sgmv"):
        got = {"over_one_at_a_time": row["speedup_of"][kernel]["over_one_at_a_time"],
               "over_peft_mixed": row["speedup_of"][kernel]["over_peft_mixed"],
               "backbone_ratio": row["over_backbone"][kernel]}
        verdicts[kernel] = {k: {"value": v, "target": TARGETS[k],
                                "met": v <= TARGETS[k] if k == "backbone_ratio" else v >= TARGETS[k]}
                            for k, v in got.items()}
    return verdicts


def markdown(report: dict) -> str:
    cfg, rows = report["config"], report["scenarios"]
    lines = header_lines(report, f"Serving many LoRA adapters ({cfg['device']}, {cfg['dtype']})",
                         ("torch", "peft", "transformers", "lorakit"),
                         f"model: Llama hidden {cfg['hidden']}, MLP {cfg['intermediate']}, {cfg['layers']} layers, "
                         f"vocab {cfg['vocab']}; LoRA on {cfg['targets']}, r={cfg['rank']} "
                         f"(mixed: {cfg['mixed_ranks']}), alpha=2r; prefill {cfg['prefill_len']} tokens/row; "
                         f"repeats {cfg['repeats']}, warm-up {cfg['warmup']}, seed {cfg['seed']}")
    names = ["merged", "one_at_a_time", "peft_mixed", "masked", "bgmv", "sgmv", "bgmv_grouped", "sgmv_grouped"]
    lines += ["", "Time over the backbone alone (medians from one interleaved run per scenario; lower is better). "
              "A/A is the backbone timed twice: its distance from 1 is the noise floor.", "",
              "| scenario | distinct | " + " | ".join(names) + " | A/A |", "|---|---:|" + "---:|" * (len(names) + 1)]
    for r in rows:
        cells = [f"{r['over_backbone'][n]:.2f}" if n in r["over_backbone"] else "" for n in names]
        lines.append(f"| {r['name']} | {r['distinct_adapters']} | " + " | ".join(cells) + f" | {r['aa_noise']:.3f} |")
    lines += ["", "Tokens per second:", "", "| scenario | backbone | " + " | ".join(names) + " |",
              "|---|---:|" + "---:|" * len(names)]
    for r in rows:
        cells = [f"{r['tokens_per_s'][n]:.0f}" if n in r["tokens_per_s"] else "" for n in names]
        lines.append(f"| {r['name']} | {r['tokens_per_s']['backbone']:.0f} | " + " | ".join(cells) + " |")
    lines += ["", "Resident memory for N adapters (MiB; weights + adapters, activations excluded):", "",
              "| N | backbone | merged (N copies) | one-at-a-time / PEFT (exact ranks) | lorakit padded | "
              "lorakit grouped |", "|---:|---:|---:|---:|---:|---:|"]
    seen = set()
    for r in rows:
        key = (r["n_adapters"], r["ranks"])
        if key in seen:
            continue
        seen.add(key)
        m = r["memory_bytes"]
        grouped = f"{m['lorakit_grouped'] / 2**20:.1f}" if "lorakit_grouped" in m else ""
        lines.append(f"| {r['n_adapters']} ({r['ranks']}) | {m['backbone'] / 2**20:.1f} | {m['merged'] / 2**20:.1f} | "
                     f"{m['one_at_a_time'] / 2**20:.1f} | {m['lorakit_padded'] / 2**20:.1f} | {grouped} |")
    verdicts = report.get("targets", {})
    if verdicts:
        point = ", ".join(f"{k}={v}" for k, v in TARGET_POINT.items())
        lines += ["", f"Targets at {point}:", "", "| kernel | target | value | met |", "|---|---|---:|:-:|"]
        for kernel, checks in verdicts.items():
            for k, v in checks.items():
                op = "<=" if k == "backbone_ratio" else ">="
                met = "yes" if v["met"] else "NO"
                lines.append(f"| {kernel} | {k} {op} {v['target']} | {v['value']:.2f} | {met} |")
    bd = report.get("breakdown")
    if bd:
        lines += ["", f"One served layer ({bd['layer']}) at the target point, pieces timed alone (ms; "
                  f"{bd['segments']} SGMV segments):", "", "| piece | ms | over base linear |", "|---|---:|---:|"]
        for k, v in bd.items():
            if isinstance(v, float):
                lines.append(f"| {k} | {1e3 * v:.3f} | {v / bd['base_linear']:.2f} |")
    worst = max(max(r["relative_max_abs_diff_vs_bgmv"].values()) for r in rows)
    lines += ["", f"Agreement checked before timing: every variant's logits equal bgmv's to a relative max abs "
              f"difference of at most {worst:.1e}; the adapters change the logits by at least "
              f"{min(r['adapters_change_logits_by'] for r in rows):.2f} (relative)."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--targets", nargs="+", default=["q_proj", "v_proj"], help="LoRA target modules")
    parser.add_argument("--rank", type=int, default=16, help="rank of every adapter in the equal-rank scenarios")
    parser.add_argument("--mixed-ranks", type=int, nargs="+", default=[4, 8, 16, 32],
                        help="ranks cycled over the adapters in the mixed-rank scenarios")
    parser.add_argument("--prefill-len", type=int, default=16, help="tokens per row in prefill")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    add_run_arguments(parser, device="auto", repeats=3, warmup=1, threads=2,
                      quick_help="smoke test: a tiny model, three scenarios, two repeats (writes nothing)",
                      out_help="result JSON (a .md is written next to it); default bench/results/serving_<device>.json "
                      "(serving_<device>_bf16.json with --dtype bf16), none with --quick")
    args = parser.parse_args(argv)
    for name in ("hidden", "intermediate", "layers", "heads", "vocab", "rank", "prefill_len"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be a positive int")
    if any(r <= 0 for r in args.mixed_ranks):
        parser.error("--mixed-ranks must be positive ints")
    if args.hidden % args.heads:
        parser.error("--hidden must be a multiple of --heads")
    check_run_arguments(parser, args)
    if args.quick:
        args.hidden, args.intermediate, args.layers, args.heads, args.vocab = 128, 256, 2, 4, 128
        args.rank, args.mixed_ranks, args.prefill_len, args.repeats, args.warmup = 8, [4, 8], 8, 2, 1
    return args


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    start = time.perf_counter()
    base = build_base(args, dtype, device)
    scenarios = sweep(args.quick)
    rows, bd = [], None
    for kind in ("equal", "mixed"):
        mine = [s for s in scenarios if s.ranks == kind]
        if not mine:
            continue
        servers = Servers(base, kind, max(s.n_adapters for s in mine), args)
        for sc in mine:
            rows.append(run_scenario(sc, servers, args, device))
        if kind == "equal" and not args.quick:
            bd = breakdown(servers, args, device)
        del servers
        gc.collect()
    report: dict[str, object] = {
        **report_head("serving", argv),
        "config": {"device": str(device), "dtype": args.dtype, "hidden": args.hidden, "intermediate": args.intermediate,
                   "layers": args.layers, "heads": args.heads, "vocab": args.vocab, "targets": args.targets,
                   "rank": args.rank, "mixed_ranks": args.mixed_ranks, "prefill_len": args.prefill_len,
                   "repeats": args.repeats, "warmup": args.warmup, "seed": args.seed, "threads": args.threads,
                   "quick": args.quick, "note": args.note, "targets_at": TARGET_POINT, "target_values": TARGETS},
        "machine": machine_info(device),
        "scenarios": rows,
        "targets": target_verdicts(rows),
        "breakdown": bd,
        "wall_time_s": time.perf_counter() - start,
    }
    suffix = "" if args.dtype == "fp32" else f"_{args.dtype}"
    write_report(report, args.out, None if args.quick else f"serving_{device.type}{suffix}.json", markdown)
    print(f"wall time {report['wall_time_s']:.0f} s")
    return report


if __name__ == "__main__":
    main()
