"""The one-page cheat sheet of notebook 14: the formulas interviews ask, each with a number computed by lorakit.

Every value is computed when the sheet is built (through :mod:`lorakit.drill.compute`, i.e. lorakit's own
memory, NF4, scaling, AdaLoRA and serving functions), so the sheet cannot disagree with the course.
"""

from __future__ import annotations

from dataclasses import dataclass

from lorakit.drill import compute as c

__all__ = ["Row", "cheat_sheet", "cheat_sheet_markdown", "cheat_sheet_text"]


@dataclass(frozen=True)
class Row:
    """One line of the sheet: the topic, the formula or fact, its value in a worked case, and the notebook."""

    topic: str
    formula: str
    value: str
    notebook: str


def _n(x: float) -> str:
    return f"{x:,.0f}"


def cheat_sheet() -> list[Row]:
    """The rows of the sheet, in the course's order."""
    full, lora = c.full_layer_params(4096, 4096), c.lora_layer_params(4096, 4096, 8)
    grad_a = c.first_step_grad_A_norm()
    b7 = c.llama_params("7B")
    rows = [
        Row("LoRA forward",
            r"$h = W_0x + \frac{\alpha}{r}B(Ax)$, $A\in\mathbb R^{r\times k}$, $B\in\mathbb R^{d\times r}$",
            r"compute $B(Ax)$: never form the $d\times k$ product", "01"),
        Row("parameters", r"$r(d+k)$ per layer vs $dk$",
            f"4096x4096, r=8: {_n(lora)} vs {_n(full)} ({c.lora_compression(4096, 4096, 8):.0f}x fewer)", "01"),
        Row("parameters, model", r"$\sum_i r(d_i+k_i)$",
            f"LLaMA-7B q,k,v,o, r=8: {_n(c.llama_lora_params('7B', 8))} = "
            f"{c.llama_lora_percent('7B', 8):.3f}% of {b7 / 1e9:.2f}B", "01"),
        Row("bypass FLOPs", r"$2r(d+k)$ vs $2dk$ per token (unmerged)",
            f"4096x4096, r=8: +{c.lora_extra_flops_percent(4096, 4096, 8):.2f}%; 0 after merging", "04"),
        Row("initialization", r"$B=0$, $A$ Kaiming-uniform: $\Delta W=0$ at step 0",
            f"step 1: $\\|\\partial L/\\partial A\\| = {grad_a:g}$, $\\partial L/\\partial B \\neq 0$", "02"),
        Row("scaling", r"LoRA $\gamma=\alpha/r$; rsLoRA $\gamma=\alpha/\sqrt r$; ratio $\sqrt r$",
            f"alpha=16: r=8 {c.scaling(8, 16):g} vs {c.scaling(8, 16, True):.3g}; r=256 {c.scaling(256, 16):.4g} vs "
            f"{c.scaling(256, 16, True):g}", "03"),
        Row("first gradient of B", r"$\|\nabla_B L\|\propto\gamma\sqrt r$",
            r"$\alpha/r$: $\propto r^{-1/2}$ (vanishes); $\alpha/\sqrt r$: flat", "03"),
        Row("merge", r"$W' = W_0 + \frac{\alpha}{r}BA$; unmerge subtracts it",
            "exact up to rounding in fp32; bf16 rounds once per merge", "04"),
        Row("bytes per parameter", "bf16 weight 2 + grad 2 + fp32 master 4 + Adam m 4 + v 4",
            f"{c.bytes_per_param(True):g} B trained, {c.bytes_per_param(False):g} B frozen: LoRA saves "
            f"{c.lora_saved_bytes_per_param():g} B per frozen parameter", "05"),
        Row("full FT vs LoRA", "static bytes, no activations",
            f"LLaMA-7B: {c.training_gib('7B', 'full'):.1f} GiB vs {c.training_gib('7B', 'lora', 16):.1f} GiB "
            "(LoRA r=16 q,k,v,o)", "05"),
        Row("activations", "LoRA keeps the same activations as full FT", "only gradient checkpointing cuts them",
            "05"),
        Row("NF4 levels", r"normal quantiles, $q_i\propto Q(p_i)$, scaled to $[-1, 1]$",
            f"{c.nf4_level_count('positive')} positive, {c.nf4_level_count('negative')} negative, exact 0; "
            f"smallest positive {c.nf4_smallest_positive():.4f}", "06"),
        Row("NF4 offset", r"top probability $\frac{1}{2}(\frac{31}{32}+\frac{29}{30}) = \frac{929}{960}$",
            f"929/960 = {c.nf4_offset(True):.9f}, stored rounded as {c.nf4_offset():.7f}", "06"),
        Row("INT4 levels", "symmetric absmax: $k/7$, $k=-7..7$",
            f"{c.int4_distinct_levels()} distinct values (one code wasted)", "06"),
        Row("blockwise absmax", "4 bits + 32/blocksize bits of fp32 constants",
            f"block 64: {c.nf4_bits_per_param(64):.4g} bits/weight; block 256: {c.nf4_bits_per_param(256):.4g}",
            "07"),
        Row("double quantization", "constants to 8 bits in blocks of 256: 8/64 + 32/(64*256)",
            f"{c.nf4_bits_per_param(64, True):.4g} bits/weight, saves {c.dq_saving_bits():.3f} bit "
            f"= {c.dq_saving_gb(65):.2f} GB on 65B weights", "07"),
        Row("QLoRA base", "NF4 + double quantization, bf16 compute",
            f"LLaMA-65B weights: {c.base_weight_gib('65B', 'bf16'):.0f} GiB bf16 vs "
            f"{c.base_weight_gib('65B', 'nf4-dq'):.1f} GiB NF4+DQ", "08"),
        Row("QLoRA training", "NF4+DQ base + bf16 adapters with Adam (no activations)",
            f"LLaMA-65B, r=16 q,k,v,o: {c.training_gib('65B', 'qlora', 16):.1f} GiB", "08"),
        Row("DoRA", r"$W' = m\odot\frac{W_0+BA}{\|W_0+BA\|_{\mathrm{row}}}$, norm detached",
            f"+1 magnitude per output row: 4096x4096, r=8: {_n(c.dora_params(4096, 4096, 8))} trainable", "09"),
        Row("AdaLoRA", r"$\Delta W = P\Lambda Q$; prune triplets by importance; cubic budget",
            f"budget 144 -> 48 over steps 100..800 of 1000: {c.adalora_budget(450, 144, 48, 100, 200, 1000)} "
            "at step 450", "10"),
        Row("serving", "one base, many adapters; adapter = $r(d+k)$ numbers per layer",
            f"LLaMA-7B q,v r=8 bf16: {c.adapter_mib('7B', 8, 'qv'):.0f} MiB each; "
            f"{c.adapters_fit(80, '7B', 8, 'qv'):,} fit next to the bf16 base in 80 GiB", "12"),
    ]
    return rows


def cheat_sheet_markdown() -> str:
    """The sheet as one Markdown table (topic, formula or fact, worked value, notebook)."""
    lines = ["| topic | formula or fact | worked value (computed by lorakit) | notebook |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.topic} | {r.formula} | {r.value} | {r.notebook} |" for r in cheat_sheet()]
    return "\n".join(lines)


def cheat_sheet_text() -> str:
    """The sheet as plain text, one row a line (what nbval compares)."""
    return "\n".join(f"[{r.notebook}] {r.topic}: {r.value}" for r in cheat_sheet())
