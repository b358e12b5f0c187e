"""Reading a trained AdaLoRA model: ranks per layer, as a grid and a table, and the parameters left (notebook 10)."""

from __future__ import annotations

from torch import nn

from lorakit.adalora.layer import adalora_layers

__all__ = ["effective_parameters", "format_rank_table", "rank_grid", "rank_report"]


def rank_report(model: nn.Module) -> dict[str, int]:
    """``{module name: rank}``, the rank being the number of non-zero ``lora_E`` entries."""
    layers = adalora_layers(model)
    if not layers:
        raise ValueError("model has no SVDLinear layers")
    return {name: layer.rank for name, layer in layers.items()}


def effective_parameters(model: nn.Module) -> int:
    """Adapter parameters left after pruning: ``sum rank * (in + out + 1)`` (what PEFT saves, resized)."""
    layers = adalora_layers(model)
    if not layers:
        raise ValueError("model has no SVDLinear layers")
    return sum(layer.rank * (layer.in_features + layer.out_features + 1) for layer in layers.values())


def _split_name(name: str) -> tuple[str, str]:
    """``"layers.0.self_attn.q_proj" -> ("layers.0", "q_proj")``: row = up to the last numeric part."""
    parts = name.split(".")
    digits = [i for i, p in enumerate(parts[:-1]) if p.isdigit()]
    row = ".".join(parts[: digits[-1] + 1]) if digits else ".".join(parts[:-1])
    return row or "(root)", parts[-1]


def _check_report(report: object) -> dict[str, int]:
    if not isinstance(report, dict) or not report:
        raise ValueError("report must be a non-empty {module name: rank} dict (from rank_report)")
    for name, rank in report.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"report keys must be module names (non-empty str), got {name!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"report[{name!r}] must be a rank (an int >= 0), got {rank!r}")
    return report


def rank_grid(report: dict[str, int]) -> tuple[list[str], list[str], list[list[int | None]]]:
    """``(rows, columns, grid)`` of a :func:`rank_report`: one row per layer, one column per matrix name.

    ``grid[i][j]`` is the rank of matrix ``columns[j]`` in layer ``rows[i]`` (None where absent).
    """
    _check_report(report)
    rows: list[str] = []
    cols: list[str] = []
    cells: dict[tuple[str, str], int] = {}
    for name, rank in report.items():
        row, col = _split_name(name)
        rows += [row] if row not in rows else []
        cols += [col] if col not in cols else []
        cells[row, col] = rank
    return rows, cols, [[cells.get((r, c)) for c in cols] for r in rows]


def format_rank_table(report: dict[str, int]) -> str:
    """A plain-text table of a :func:`rank_report` (layers x matrices, with row totals)."""
    rows, cols, grid = rank_grid(report)
    width = max(len(c) for c in cols) + 1
    first = max(len(r) for r in rows + ["layer"]) + 1
    lines = ["layer".ljust(first) + "".join(c.rjust(width) for c in cols) + "total".rjust(7)]
    for row, vals in zip(rows, grid, strict=True):
        cells = "".join(("-" if v is None else str(v)).rjust(width) for v in vals)
        lines.append(row.ljust(first) + cells + str(sum(v for v in vals if v is not None)).rjust(7))
    col_totals = [sum(row[j] for row in grid if row[j] is not None) for j in range(len(cols))]
    totals = "".join(str(t).rjust(width) for t in col_totals)
    lines.append("total".ljust(first) + totals + str(sum(col_totals)).rjust(7))
    return "\n".join(lines)
