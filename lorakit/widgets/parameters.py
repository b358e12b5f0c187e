"""The LoRA parameter calculator (notebook 01, eq. 5): ``r (d_in + d_out)`` trainable numbers vs ``d_in d_out``."""

from __future__ import annotations

from lorakit.widgets._ui import Panel, figure, guarded, png_bytes

__all__ = ["lora_parameter_rows", "lora_parameter_summary", "lora_parameter_text", "lora_parameter_widget"]

RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def lora_parameter_summary(d_in: int, d_out: int, r: int) -> dict[str, float]:
    """Trainable LoRA parameters ``r (d_in + d_out)`` vs the full ``d_in d_out`` (notebook 01, eq. 5)."""
    for name, v in (("d_in", d_in), ("d_out", d_out), ("r", r)):
        _positive_int(name, v)
    lora, full = r * (d_in + d_out), d_in * d_out
    return {"lora": lora, "full": full, "fraction": lora / full, "savings": full / lora}


def lora_parameter_text(d_in: int, d_out: int, r: int, n_layers: int = 1) -> str:
    """One rounded line: LoRA's count, the full count, the fraction and the compression, for ``n_layers`` layers."""
    _positive_int("n_layers", n_layers)
    s = lora_parameter_summary(d_in, d_out, r)
    note = " (r > min(d_in, d_out): the extra rank adds parameters, not rank)" if r > min(d_in, d_out) else ""
    return (f"LoRA trains {n_layers * s['lora']:,} numbers vs {n_layers * s['full']:,} for the full update: "
            f"{100 * s['fraction']:.3g}% of it, {s['savings']:.3g}x fewer{note}")


def lora_parameter_rows(d_in: int, d_out: int, ranks: tuple[int, ...] = RANKS) -> list[dict[str, float]]:
    """``lora_parameter_summary`` for each rank (the curve the widget plots)."""
    return [{"r": r, **lora_parameter_summary(d_in, d_out, r)} for r in ranks]


def _plot(d_in: int, d_out: int, r: int) -> bytes:
    rows = lora_parameter_rows(d_in, d_out)
    s = lora_parameter_summary(d_in, d_out, r)
    fig = figure(7.5, 3.0)
    ax = fig.add_subplot()
    ax.plot([x["r"] for x in rows], [x["lora"] for x in rows], "o-", label=r"LoRA $r(d_{in}+d_{out})$")
    ax.axhline(s["full"], color="k", ls="--", label=r"full update $d_{in}d_{out}$")
    ax.plot([r], [s["lora"]], "o", ms=12, mfc="none", mec="C3", label=f"r = {r}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("rank r")
    ax.set_ylabel("trainable numbers (one layer)")
    ax.set_title(f"{d_in} -> {d_out} layer: LoRA grows linearly in r, the full update is fixed")
    ax.legend(loc="lower right", fontsize=8)
    return png_bytes(fig)


def lora_parameter_widget(d_in: int = 4096, d_out: int = 4096, r: int = 16, n_layers: int = 1):  # pragma: no cover
    """Boxes for ``d_in``, ``d_out``, ``n_layers`` and a rank slider; a rounded summary line and a log-log plot."""
    import ipywidgets as w

    boxes = {"d_in": w.IntText(value=d_in, description="d_in"), "d_out": w.IntText(value=d_out, description="d_out"),
             "n_layers": w.IntText(value=n_layers, description="layers")}
    rank = w.SelectionSlider(options=list(RANKS), value=r, description="r")
    text, message = w.HTML(), w.HTML()
    image = w.Image(format="png", layout=w.Layout(width="640px"))

    def update() -> None:
        text.value = ""
        values = {k: b.value for k, b in boxes.items()}
        line = lora_parameter_text(values["d_in"], values["d_out"], rank.value, values["n_layers"])
        text.value = f"<code>{line}</code>"
        image.value = _plot(values["d_in"], values["d_out"], rank.value)

    run = guarded(update, message)
    for control in (*boxes.values(), rank):
        control.observe(run, "value")
    run()
    controls = w.HBox([w.VBox(list(boxes.values())), rank])
    return Panel([controls, text, message, image], "LoRA parameter calculator (r(d_in + d_out) vs d_in d_out)")
