"""4-bit NormalFloat (NF4), blockwise absmax quantization and double quantization (notebooks 06-08).

QLoRA (Dettmers et al., 2023, arXiv:2305.14314) stores a frozen base weight in 4 bits a value and
dequantizes it on the fly. This subpackage is a pure-PyTorch implementation (any device, fp32/bf16/fp16)
whose bytes equal bitsandbytes' ``quantize_4bit(..., quant_type="nf4")`` bit for bit; the tests
cross-check it (``tests/test_nf4_crosscheck.py``). Its parts, one concept a module:

* :mod:`~lorakit.nf4.codes`: the 16 NF4 levels (notebook 06), INT4 and FP4 for comparison, and the 8-bit
  dynamic code of double quantization;
* :mod:`~lorakit.nf4.containers`: :class:`QuantizedTensor` (packed codes + per-block absmax + shape/dtype)
  and :class:`DoubleQuantizedAbsmax`, checked when made;
* :mod:`~lorakit.nf4.quantize`: blockwise absmax quantization, bitsandbytes' rounding copied exactly;
* :mod:`~lorakit.nf4.double_quant`: the absmax constants quantized again (8 bits, blocks of 256);
* :mod:`~lorakit.nf4.dequantize`: the checked dequantize users call, and the nibble unpacking;
* :mod:`~lorakit.nf4.kernels`: the unchecked, sync-free decode a layer runs every step;
* :mod:`~lorakit.nf4.storage`: bytes and bits per parameter, measured and in closed form;
* :mod:`~lorakit.nf4.serialization`: the state-dict entries of a quantized tensor in bitsandbytes' format;
* :mod:`~lorakit.nf4.validation`: the argument checks (each names the argument).

**The NF4 levels (notebook 06).** Quantile quantization puts one level per equal-probability slice of
the data's distribution. For weights ~ N(0, sigma^2) the paper's eq. (4) writes the i-th level as

    q_i = 1/2 * ( Q_X(i / (2^k + 1)) + Q_X((i + 1) / (2^k + 1)) ),

with ``Q_X`` the standard normal quantile function (inverse CDF), then normalises to [-1, 1].
bitsandbytes (and so every released QLoRA checkpoint) builds the table slightly differently, and
:func:`nf4_code` follows bitsandbytes, since the bytes must interoperate (see its docstring).

**Blockwise absmax (notebook 07).** The flattened tensor is cut into blocks of ``blocksize`` (64 in
QLoRA) consecutive elements; each block is divided by its own absolute maximum (stored in fp32) and
every value is rounded to the nearest level. One outlier then only coarsens its own block.
Two 4-bit codes share a byte, the first element in the high nibble.

**Double quantization (notebook 07).** The fp32 absmax costs 32/64 = 0.5 bit per parameter; quantizing
those constants again to 8 bits brings the overhead to 0.127 bit per parameter.

**Checked once, decoded fast.** Everything a user hands in is checked (a NaN or negative absmax is a
ValueError naming the field); a layer checks its quantized weight once, when it is made or loaded, and
then decodes it every step with :mod:`~lorakit.nf4.kernels`: no host sync, no float64 arithmetic, one output tensor.
"""

from lorakit.nf4.codes import (
    NF4_OFFSET,
    NF4_OFFSET_EXACT,
    dynamic_code,
    fp4_code,
    int4_code,
    nf4_code,
)
from lorakit.nf4.containers import DoubleQuantizedAbsmax, QuantizedTensor
from lorakit.nf4.dequantize import dequantize_4bit, dequantize_nf4, unpack_codes
from lorakit.nf4.double_quant import double_quantize
from lorakit.nf4.quantize import quantize_4bit, quantize_nf4
from lorakit.nf4.serialization import quant_state_entries, quantized_from_state
from lorakit.nf4.storage import bits_per_parameter, storage_bytes
from lorakit.nf4.validation import BLOCKSIZES, FLOAT_DTYPES

__all__ = [
    "BLOCKSIZES", "FLOAT_DTYPES", "NF4_OFFSET", "NF4_OFFSET_EXACT", "DoubleQuantizedAbsmax", "QuantizedTensor",
    "bits_per_parameter", "dequantize_4bit", "dequantize_nf4", "double_quantize", "dynamic_code", "fp4_code",
    "int4_code", "nf4_code", "quant_state_entries", "quantize_4bit", "quantize_nf4", "quantized_from_state",
    "storage_bytes", "unpack_codes",
]
