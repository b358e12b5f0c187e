"""Thin ipywidgets front-ends over pure functions (the functions are what the tests exercise).

Each ``*_widget()`` returns an ``ipywidgets`` object (display it, or let Jupyter do it); the
arithmetic lives in the pure functions next to it and in :mod:`lorakit.lora` / :mod:`lorakit.memory`.
"""

from __future__ import annotations

import math

from lorakit.lora import lora_scaling
from lorakit.memory import llama_parameter_count, lora_parameter_count, training_bytes


def lora_parameter_summary(d_in: int, d_out: int, r: int) -> dict[str, float]:
    """Trainable LoRA parameters ``r (d_in + d_out)`` vs the full ``d_in d_out`` (notebook 01)."""
    for name, v in (("d_in", d_in), ("d_out", d_out), ("r", r)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    lora, full = r * (d_in + d_out), d_in * d_out
    return {"lora": lora, "full": full, "fraction": lora / full, "savings": full / lora}


def scaling_summary(r: int, alpha: float) -> dict[str, float]:
    """Both scalings at rank ``r`` and their ratio (notebook 03).

    ``rslora_over_lora = sqrt(r)``: how much larger the rsLoRA bypass (and its gradients) is.
    """
    lora, rs = lora_scaling(r, alpha, rslora=False), lora_scaling(r, alpha, rslora=True)
    return {"r": r, "alpha": alpha, "lora": lora, "rslora": rs, "rslora_over_lora": rs / lora}


def memory_summary(
    size: str, r: int, targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
) -> dict[str, float]:
    """GiB to fine-tune a LLaMA ``size`` model fully vs with LoRA (mixed-precision Adam; notebook 05)."""
    n = llama_parameter_count(size)
    n_lora = lora_parameter_count(size, r, targets)
    full = training_bytes(n, n).total / 2**30
    lora = training_bytes(n + n_lora, n_lora).total / 2**30
    return {"params": n, "lora_params": n_lora, "full_gib": full, "lora_gib": lora, "ratio": full / lora}


def _format(summary: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items())


def scaling_widget():  # pragma: no cover - UI glue, the pure function is tested
    """Sliders over r and alpha showing alpha/r, alpha/sqrt(r) and their ratio."""
    import ipywidgets as w

    r = w.SelectionSlider(options=[2**i for i in range(9)], value=8, description="r")
    alpha = w.FloatLogSlider(value=16, base=2, min=0, max=9, step=1, description="alpha")
    out = w.HTML()

    def update(*_):
        s = scaling_summary(r.value, alpha.value)
        out.value = (f"<code>alpha/r = {s['lora']:.4g} &nbsp; alpha/sqrt(r) = {s['rslora']:.4g} &nbsp; "
                     f"ratio = sqrt(r) = {math.sqrt(r.value):.3g}</code>")

    r.observe(update, "value")
    alpha.observe(update, "value")
    update()
    return w.VBox([r, alpha, out])


def memory_widget():  # pragma: no cover - UI glue, the pure function is tested
    """Dropdown over LLaMA sizes and a slider over r: full fine-tuning vs LoRA GiB."""
    import ipywidgets as w

    size = w.Dropdown(options=["7B", "13B", "33B", "65B"], value="7B", description="model")
    r = w.SelectionSlider(options=[2**i for i in range(1, 9)], value=16, description="r")
    out = w.HTML()

    def update(*_):
        out.value = f"<code>{_format(memory_summary(size.value, r.value))}</code>"

    size.observe(update, "value")
    r.observe(update, "value")
    update()
    return w.VBox([size, r, out])
