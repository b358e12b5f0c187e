"""What the benchmarks in bench/ share (see bench/README.md).

* the model pieces: :class:`OneLayer` (the smallest model PEFT can wrap), :func:`loss_fn`, :func:`make_step`
  (the training step every benchmark times) and :func:`make_forward`;
* the agreement check run before timing: :func:`outputs_and_input_grads`, :func:`relative_max_abs_diff`,
  :func:`require_agreement`;
* the record of where a result comes from: :func:`resolve_device`, :func:`machine_info`, :func:`report_head`,
  :func:`header_lines`;
* the command line and result files: :func:`add_run_arguments`, :func:`check_run_arguments`,
  :func:`write_report`.
"""

from __future__ import annotations

import sys

# bench/kernels.py (this folder is sys.path[0] for every bench script) would shadow the optional PyPI package
# `kernels` that transformers and bitsandbytes try to import: mark it absent so they fall back cleanly.
if "kernels" not in sys.modules or getattr(sys.modules["kernels"], "__file__", "").endswith("bench/kernels.py"):
    sys.modules["kernels"] = None  # type: ignore[assignment]

import argparse
import datetime
import json
import os
import platform
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import peft
import torch
import transformers
from torch import nn

import lorakit

RESULTS = Path(__file__).resolve().parent / "results"
#: ``--dtype`` choices of the layer benchmarks.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ------------------------------------------------------------------------------------------ model pieces
class OneLayer(nn.Module):
    """The smallest model PEFT can wrap: one ``nn.Linear`` named ``proj``."""

    def __init__(self, proj: nn.Linear) -> None:
        super().__init__()
        self.proj = proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def loss_fn(out: torch.Tensor) -> torch.Tensor:
    """The scalar every step differentiates (fp32 reduction, so bf16 runs do not lose the mean)."""
    return out.float().square().mean()


def make_step(model: nn.Module, x: torch.Tensor, lr: float = 1e-4) -> Callable[[], None]:
    """One training step on ``model``: forward, :func:`loss_fn`, backward, AdamW (only if something is
    trainable), ``zero_grad(set_to_none=True)`` and ``x.grad = None``."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr) if params else None

    def step() -> None:
        loss_fn(model(x)).backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        x.grad = None

    return step


def make_forward(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """An inference forward: eval mode, no autograd graph."""
    model.eval()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    return forward


# ------------------------------------------------------------------------------------------ agreement
def outputs_and_input_grads(models: Iterable[nn.Module], x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(output, dL/dx)`` of each model on its own copy of ``x`` (backward of :func:`loss_fn`)."""
    results = []
    for model in models:
        xi = x.detach().clone().requires_grad_(True)
        out = model(xi)
        loss_fn(out).backward()
        results.append((out.detach(), xi.grad))
    return results


def relative_max_abs_diff(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """``max|a - b| / max|b|`` (in fp32) for every named pair ``(a, b)``."""
    errors = {}
    for name, (a, b) in pairs.items():
        a, b = a.float(), b.float()
        errors[name] = ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
    return errors


def require_agreement(errors: dict[str, float], tol: float, what: str) -> None:
    """RuntimeError when any error exceeds ``tol``: timing two different computations would be meaningless."""
    if max(errors.values()) > tol:
        raise RuntimeError(f"{what} disagree beyond {tol} (relative max abs difference): {errors}")


# ------------------------------------------------------------------------------------------ provenance
def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without CUDA is an error."""
    if name == "auto":
        return lorakit.device()
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but torch.cuda.is_available() is False")
    return torch.device(name)


def machine_info(device: torch.device) -> dict[str, object]:
    """Everything needed to tell two result files apart: host, library versions, threads, device."""
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
        try:  # the CPU model, where Linux exposes it
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    device_name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "lorakit": lorakit.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": device_name,
        "cuda": torch.version.cuda,
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }


def report_head(benchmark: str, argv: Sequence[str] | None) -> dict[str, object]:
    """The first keys of every result file: benchmark name, UTC time, the command that produced it."""
    return {
        "benchmark": benchmark,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
    }


def header_lines(report: dict[str, object], title: str, libraries: Sequence[str], settings: str) -> list[str]:
    """The Markdown head of a result file: title, date and command, machine and versions, settings, note."""
    cfg, info = report["config"], report["machine"]
    versions = ", ".join(f"{lib} {info[lib]}" for lib in libraries)
    lines = [
        f"# {title}",
        "",
        f"- created: {report['created']}; command: `{report['command']}`",
        f"- device: {info['device_name']}; {versions}; torch threads {info['torch_threads']}, "
        f"CPU count {info['cpu_count']}; platform {info['platform']}",
        f"- {settings}" + (" (**--quick smoke settings: not a result**)" if cfg["quick"] else ""),
    ]
    if cfg.get("note"):
        lines.append(f"- note: {cfg['note']}")
    return lines


# ------------------------------------------------------------------------------------------ command line
def add_run_arguments(
    parser: argparse.ArgumentParser,
    *,
    device: str,
    repeats: int,
    warmup: int,
    threads: int | None,
    quick_help: str,
    out_help: str,
    repeats_help: str = "timed rounds per variant",
) -> None:
    """The options every benchmark has: device, repeats, warm-up, seed, threads, note, quick, out."""
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default=device)
    parser.add_argument("--repeats", type=int, default=repeats, help=repeats_help)
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed calls per variant first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=threads,
                        help="torch.set_num_threads" + ("; None keeps torch's choice" if threads is None else ""))
    parser.add_argument("--note", default="", help="free text recorded with the results (e.g. machine load)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=None, help=out_help)


def check_run_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``parser.error`` unless --repeats > 0, --warmup >= 0 and --threads (when given) > 0."""
    if args.repeats <= 0:
        parser.error("--repeats must be a positive int")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.threads is not None and args.threads <= 0:
        parser.error("--threads must be a positive int")


def write_report(
    report: dict[str, object], out: Path | None, default_name: str | None, markdown: Callable[[dict], str]
) -> None:
    """Write ``out`` (JSON) and the Markdown next to it; ``out=None``: ``results/<default_name>``, or with
    ``default_name=None`` (quick runs) print the Markdown and write nothing."""
    if out is None and default_name is not None:
        out = RESULTS / default_name
    if out is None:
        print(markdown(report))
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")
