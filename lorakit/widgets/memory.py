"""The memory calculator (notebook 05): where the GiB of fine-tuning go, for full FT, LoRA and QLoRA.

The static bytes are notebook 05's eq. 1 (:func:`lorakit.memory.training_bytes`: mixed-precision Adam, 16 bytes
per trainable parameter, 2 per frozen one); a QLoRA base costs the bits per parameter NF4 with double
quantization stores (notebook 07, :func:`lorakit.nf4.storage_bytes`). Activations are an *estimate* by counting
the bf16 tensors one LLaMA layer keeps for the backward pass (in the manner of Korthikanti et al., 2022):
per token, the two norm inputs and outputs, q, k, v and the attention output (8 d_model numbers), the four
d_ff-wide MLP tensors (gate, up, SiLU(gate), their product) and, without a fused attention kernel, the
softmax probabilities (n_heads x seq_len); plus fp32 logits. Gradient checkpointing keeps only each layer's
input and recomputes one layer at a time. LoRA and QLoRA keep the same activations as full fine-tuning:
backpropagating to the adapters still needs every layer's input (notebook 05, section 4).
"""

from __future__ import annotations

from lorakit.memory import LLAMA_SHAPES, llama_parameter_count, llama_shape, lora_parameter_count, training_bytes
from lorakit.nf4 import storage_bytes
from lorakit.widgets._ui import Panel, figure, guarded, png_bytes

__all__ = ["METHODS", "TARGET_SETS", "activation_bytes", "memory_breakdown", "memory_summary", "memory_text",
           "memory_widget"]

GIB = 2**30
METHODS = ("full FT", "LoRA", "QLoRA")
PARTS = ("weights", "gradients", "optimizer", "activations")
TARGET_SETS: dict[str, tuple[str, ...]] = {
    "q, v": ("q_proj", "v_proj"),
    "q, k, v, o": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "all linear": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
N_HEADS = {"7B": 32, "13B": 40, "33B": 52, "65B": 64}  # LLaMA-1 (Touvron et al., 2023, Table 2)
_BIG = 64 * 256 * 1024


def memory_summary(
    size: str, r: int, targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
) -> dict[str, float]:
    """GiB to fine-tune a LLaMA ``size`` model fully vs with LoRA (mixed-precision Adam; notebook 05)."""
    n = llama_parameter_count(size)
    n_lora = lora_parameter_count(size, r, targets)
    full = training_bytes(n, n).total / GIB
    lora = training_bytes(n + n_lora, n_lora).total / GIB
    return {"params": n, "lora_params": n_lora, "full_gib": full, "lora_gib": lora, "ratio": full / lora}


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def activation_bytes(size: str, batch: int, seq_len: int, checkpointing: bool = False,
                     fused_attention: bool = True) -> int:
    """Estimated bytes of activations kept for the backward pass (see the module docstring)."""
    s = llama_shape(size)
    batch, seq_len = _positive_int("batch", batch), _positive_int("seq_len", seq_len)
    d, f, layers = s["d_model"], s["d_ff"], s["n_layers"]
    per_token_layer = 2 * (8 * d + 4 * f + (0 if fused_attention else N_HEADS[size] * seq_len))
    tokens = batch * seq_len
    logits = 4 * tokens * s["vocab"]
    if checkpointing:
        return tokens * (layers * 2 * d + per_token_layer) + logits
    return tokens * layers * per_token_layer + logits


def memory_breakdown(size: str, r: int = 16, targets: tuple[str, ...] = TARGET_SETS["q, k, v, o"], batch: int = 1,
                     seq_len: int = 2048, checkpointing: bool = False,
                     fused_attention: bool = True) -> dict[str, dict[str, float]]:
    """``{method: {weights, gradients, optimizer, activations, total}}`` in GiB for full FT, LoRA and QLoRA.

    ``optimizer`` holds Adam's m and v and the fp32 master copy of each trainable weight (12 bytes each).
    """
    n = llama_parameter_count(size)
    n_lora = lora_parameter_count(size, r, targets)
    act = activation_bytes(size, batch, seq_len, checkpointing, fused_attention)
    full = training_bytes(n, n)
    lora = training_bytes(n + n_lora, n_lora)
    adapter = training_bytes(n_lora, n_lora)
    nf4_base = n * 8 * storage_bytes(_BIG, 64, True) / _BIG / 8
    raw = {
        "full FT": (full.weights, full.gradients, full.master_weights + full.optimizer_states),
        "LoRA": (lora.weights, lora.gradients, lora.master_weights + lora.optimizer_states),
        "QLoRA": (nf4_base + adapter.weights, adapter.gradients, adapter.master_weights + adapter.optimizer_states),
    }
    out = {}
    for method, (weights, grads, opt) in raw.items():
        parts = dict(zip(PARTS, (weights / GIB, grads / GIB, opt / GIB, act / GIB), strict=True))
        out[method] = {**parts, "total": sum(parts.values())}
    return out


def memory_text(breakdown: dict[str, dict[str, float]]) -> str:
    """One rounded line: total GiB per method and the share of activations."""
    return "   ".join(f"{m}: {b['total']:.1f} GiB (activations {b['activations']:.1f})" for m, b in breakdown.items())


def _plot(breakdown: dict[str, dict[str, float]], gpu_gib: float, title: str) -> bytes:
    fig = figure(7.5, 3.4)
    ax = fig.add_subplot()
    bottom = [0.0] * len(METHODS)
    for part in PARTS:
        values = [breakdown[m][part] for m in METHODS]
        ax.bar(METHODS, values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.axhline(gpu_gib, color="k", ls="--", lw=1, label=f"one {gpu_gib:g} GiB GPU")
    for i, total in enumerate(bottom):
        ax.text(i, total, f"{total:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("GiB")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    return png_bytes(fig)


def memory_widget():  # pragma: no cover - UI glue, the pure functions are tested
    """Model size, rank, targets, batch, sequence length and checkpointing: a stacked bar per method."""
    import ipywidgets as w

    size = w.Dropdown(options=sorted(LLAMA_SHAPES, key=lambda x: int(x[:-1])), value="7B", description="model")
    r = w.SelectionSlider(options=[2**i for i in range(1, 9)], value=16, description="r")
    targets = w.Dropdown(options=list(TARGET_SETS), value="q, k, v, o", description="targets")
    batch = w.IntText(value=1, description="batch")
    seq = w.Dropdown(options=[256, 512, 1024, 2048, 4096], value=2048, description="seq len")
    ckpt = w.Checkbox(value=False, description="gradient checkpointing")
    gpu = w.Dropdown(options=[24, 48, 80], value=48, description="GPU GiB")
    text, message = w.HTML(), w.HTML()
    image = w.Image(format="png", layout=w.Layout(width="640px"))

    def update() -> None:
        text.value = ""
        b = memory_breakdown(size.value, r.value, TARGET_SETS[targets.value], batch.value, seq.value, ckpt.value)
        text.value = f"<code>{memory_text(b)}</code>"
        title = (f"LLaMA-{size.value}, r = {r.value} on {targets.value}, batch {batch.value} x {seq.value} tokens"
                 f"{', checkpointing' if ckpt.value else ''}")
        image.value = _plot(b, gpu.value, title)

    run = guarded(update, message)
    for control in (size, r, targets, batch, seq, ckpt, gpu):
        control.observe(run, "value")
    run()
    rows = [w.HBox([size, r, targets]), w.HBox([batch, seq, gpu, ckpt])]
    return Panel([*rows, text, message, image], "memory calculator (full FT vs LoRA vs QLoRA, stacked GiB)")
