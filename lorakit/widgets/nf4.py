"""The NF4 explorer (notebooks 06-07): the 16 levels on the normal pdf, and what the block size trades.

Left: the NF4 levels (``lorakit.nf4.nf4_code``) placed on the standard normal, ``level * Q(offset)``, where
``Q`` is the normal quantile function (the levels are normal quantiles divided by the largest one), and the
fraction of a Gaussian tensor's weights that each code receives after blockwise absmax quantization at the
chosen block size (measured with ``quantize_nf4``). Right: the block size's trade-off, both measured on the same
seeded Gaussian tensor: bits per parameter spent on the absmax constants (with and without double
quantization) against the root-mean-square error of dequantization.
"""

from __future__ import annotations

import functools

import torch

from lorakit.nf4 import BLOCKSIZES, bits_per_parameter, dequantize_nf4, nf4_code, quantize_nf4, unpack_codes
from lorakit.nf4.codes import NF4_OFFSET
from lorakit.widgets._ui import Panel, figure, guarded, png_bytes

__all__ = ["blocksize_tradeoff", "code_usage", "nf4_levels_on_normal", "nf4_text", "nf4_widget"]

SAMPLE_SIZE = 64 * 1024  # divisible by every block size in BLOCKSIZES


@functools.lru_cache(maxsize=1)
def _sample() -> torch.Tensor:
    return torch.randn(SAMPLE_SIZE, generator=torch.Generator().manual_seed(0))


def _check_blocksize(blocksize: object) -> int:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize not in BLOCKSIZES:
        raise ValueError(f"blocksize must be one of {BLOCKSIZES}, got {blocksize!r}")
    return blocksize


def nf4_levels_on_normal() -> list[float]:
    """The 16 NF4 levels in units of the normal's standard deviation: ``level * Q(NF4_OFFSET)``."""
    from scipy.stats import norm

    return [float(v) * float(norm.ppf(NF4_OFFSET)) for v in nf4_code()]


def code_usage(blocksize: int = 64) -> dict[str, object]:
    """Fraction of a seeded N(0, 1) tensor that lands on each of the 16 codes, and the codes' entropy in bits.

    Equal use of all 16 codes would be 4 bits; NF4 is built for equal use, and the block size moves it away
    (a larger block has a larger absmax, which squeezes the scaled weights towards the middle levels).
    """
    q = quantize_nf4(_sample(), blocksize=_check_blocksize(blocksize))
    counts = torch.bincount(unpack_codes(q), minlength=16).double()
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * p[p > 0].log2()).sum())
    return {"fractions": p.tolist(), "entropy_bits": entropy}


@functools.lru_cache(maxsize=4)
def _tradeoff(blocksizes: tuple[int, ...]) -> tuple[dict[str, float], ...]:
    w = _sample()
    rows = []
    for bs in blocksizes:
        single, double = quantize_nf4(w, blocksize=bs), quantize_nf4(w, blocksize=bs, double_quant=True)
        rmse = float((dequantize_nf4(single) - w).pow(2).mean().sqrt())
        rmse_dq = float((dequantize_nf4(double) - w).pow(2).mean().sqrt())
        rows.append({"blocksize": bs, "bits": bits_per_parameter(single), "bits_dq": bits_per_parameter(double),
                     "rmse": rmse, "rmse_dq": rmse_dq})
    return tuple(rows)


def blocksize_tradeoff(blocksizes: tuple[int, ...] = BLOCKSIZES) -> list[dict[str, float]]:
    """Per block size: measured bits per parameter (``bits``, ``bits_dq``) and dequantization RMSE (``rmse``,
    ``rmse_dq``) on the seeded N(0, 1) tensor of :data:`SAMPLE_SIZE` elements."""
    blocksizes = tuple(_check_blocksize(b) for b in blocksizes)
    return [dict(row) for row in _tradeoff(blocksizes)]


def nf4_text(blocksize: int, double_quant: bool) -> str:
    """One rounded line for the chosen block size."""
    row = blocksize_tradeoff((blocksize,))[0]
    bits, rmse = (row["bits_dq"], row["rmse_dq"]) if double_quant else (row["bits"], row["rmse"])
    usage = code_usage(blocksize)
    return (f"blocksize {blocksize}{' + double quantization' if double_quant else ''}: {bits:.4g} bits per weight "
            f"({bits - 4:.3g} of them for the constants), RMSE {rmse:.4f} on N(0, 1) weights, "
            f"code entropy {usage['entropy_bits']:.3f} of 4 bits")


def _plot(blocksize: int, double_quant: bool) -> bytes:
    from scipy.stats import norm

    levels = nf4_levels_on_normal()
    usage = code_usage(blocksize)["fractions"]
    rows = blocksize_tradeoff()
    fig = figure(9.0, 3.3)
    left, right = fig.subplots(1, 2)
    xs = [x / 50 for x in range(-150, 151)]
    left.plot(xs, [norm.pdf(x) for x in xs], "k-", lw=1, label="N(0, 1) pdf")
    for level in levels:
        left.axvline(level, color="C0", lw=0.8, alpha=0.7)
    left.bar(levels, usage, width=0.08, color="C1", label=f"share of weights per code (blocks of {blocksize})")
    left.axhline(1 / 16, color="C1", ls=":", lw=1, label="equal use: 1/16")
    left.set_xlabel("weight / std  (levels at NF4 code x Q(0.9677))")
    left.set_ylabel("density / share")
    left.legend(fontsize=7, loc="upper left")
    sizes = [row["blocksize"] for row in rows]
    right.plot(sizes, [row["bits"] - 4 for row in rows], "o-", label="constants, fp32 absmax")
    right.plot(sizes, [row["bits_dq"] - 4 for row in rows], "s-", label="constants, double quantized")
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel("block size")
    right.set_ylabel("bits per weight for constants")
    twin = right.twinx()
    twin.plot(sizes, [row["rmse_dq" if double_quant else "rmse"] for row in rows], "^--", color="C3", label="RMSE")
    twin.set_ylabel("RMSE (N(0, 1) weights)", color="C3")
    right.axvline(blocksize, color="C3", lw=1)
    right.legend(fontsize=7, loc="upper right")
    right.set_title("smaller blocks: less error, more overhead", fontsize=9)
    return png_bytes(fig)


def nf4_widget(blocksize: int = 64, double_quant: bool = True):  # pragma: no cover - UI glue, pure parts tested
    """A block-size slider and a double-quantization box: the levels, their use, and the trade-off."""
    import ipywidgets as w

    size = w.SelectionSlider(options=list(BLOCKSIZES), value=blocksize, description="block size")
    dq = w.Checkbox(value=double_quant, description="double quantization")
    text, message = w.HTML(), w.HTML()
    image = w.Image(format="png", layout=w.Layout(width="760px"))

    def update() -> None:
        text.value = ""
        text.value = f"<code>{nf4_text(size.value, dq.value)}</code>"
        image.value = _plot(size.value, dq.value)

    run = guarded(update, message)
    size.observe(run, "value")
    dq.observe(run, "value")
    run()
    return Panel([w.HBox([size, dq]), text, message, image], "NF4 explorer (levels, block size and overhead)")

