"""Bad input to ``lorakit.qlora``'s public API (issue 9, items 8 and 11): a clear error, the object unchanged.

Every case is one row: how to build the object the call may touch (a model, a layer, or nothing), the call,
the exception type and a pattern its message must match (it names the argument). After the error the object is
compared with a snapshot taken before the call (tests/snapshot.py), so no row can pass by half-changing it.
State-dict cases are in tests/test_qlora_serialization.py, NF4-level ones in tests/test_nf4_bad_input.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from builders import tiny_lm
from snapshot import assert_unchanged, snapshot
from torch import nn

import lorakit
from lorakit import nf4
from lorakit.peft import LoRAConfig
from lorakit.qlora import (
    NF4Linear,
    QLoRALinear,
    apply_qlora,
    bnb_linear4bit_from_linear,
    install_load_check,
    merge_and_unload,
    merge_error,
    merge_qlora,
    qlora_layers,
)

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]


def linear(in_f: int = 64, out_f: int = 32, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(in_f, out_f, bias=bias)


def layer() -> QLoRALinear:
    return QLoRALinear(linear(), r=4, alpha=8)


def merged_layer() -> QLoRALinear:
    out = layer()
    out.merge()
    return out


def base() -> NF4Linear:
    return NF4Linear.from_linear(linear())


def model() -> nn.Module:
    return tiny_lm()


def qmodel() -> nn.Module:
    return apply_qlora(tiny_lm(), LoRAConfig(r=2, target_modules=["q_proj", "v_proj"]), blocksize=32)


def q2d() -> nf4.QuantizedTensor:
    return nf4.quantize_nf4(torch.randn(32, 64, generator=torch.Generator().manual_seed(0)))


def nan_absmax() -> nf4.QuantizedTensor:
    q = q2d()
    q.absmax[2] = float("nan")  # mutated after construction
    return q


def negative_absmax() -> nf4.QuantizedTensor:
    q = q2d()
    q.absmax[0] = -1.0
    return q


def conv() -> nn.Module:
    return nn.Conv1d(4, 4, 1)


def bnb4() -> nn.Module:
    return bnb_linear4bit_from_linear(linear(), 32)


def lora_on(x: nn.Linear) -> nn.Module:
    return lorakit.LoRALinear(x)


X = torch.randn(3, 64)
XL = torch.ones(3, 64, dtype=torch.long)
X_NARROW = torch.randn(3, 63)
NONE = None  # a row whose call touches no object

# (case id, object builder or None, call(obj), exception, message pattern)
CASES = [
    # ---- QLoRALinear(...)
    ("layer-base-none", None, lambda o: QLoRALinear(None), TypeError, "base must be an nn.Linear"),
    ("layer-base-conv", conv, lambda o: QLoRALinear(o), TypeError, "base must be an nn.Linear"),
    ("layer-base-embedding", lambda: nn.Embedding(4, 4), lambda o: QLoRALinear(o), TypeError, "base must be"),
    ("layer-base-float64", lambda: linear().double(), lambda o: QLoRALinear(o), TypeError,
     r"base.weight must be fp32, bf16 or fp16"),
    ("layer-base-linear4bit", bnb4, lambda o: QLoRALinear(o), TypeError, "already quantized"),
    ("layer-base-nf4linear", base, lambda o: QLoRALinear(o), TypeError, "base must be an nn.Linear"),
    ("layer-base-lora", lambda: lora_on(linear()), lambda o: QLoRALinear(o), TypeError, "base must be an nn.Linear"),
    ("layer-base-nan", lambda: _with(linear(), float("nan")), lambda o: QLoRALinear(o), ValueError,
     "base.weight contains NaN"),
    ("layer-base-inf", lambda: _with(linear(), float("-inf")), lambda o: QLoRALinear(o), ValueError,
     "base.weight contains NaN or inf"),
    ("layer-r-float", linear, lambda o: QLoRALinear(o, r=2.5), TypeError, "r must be an int"),
    ("layer-r-bool", linear, lambda o: QLoRALinear(o, r=True), TypeError, "r must be an int"),
    ("layer-r-negative", linear, lambda o: QLoRALinear(o, r=-1), ValueError, "r must be a positive int"),
    ("layer-alpha-zero", linear, lambda o: QLoRALinear(o, alpha=0), ValueError, "alpha must be a finite number > 0"),
    ("layer-alpha-nan", linear, lambda o: QLoRALinear(o, alpha=float("nan")), ValueError, "alpha must be a finite"),
    ("layer-alpha-str", linear, lambda o: QLoRALinear(o, alpha="8"), TypeError, "alpha must be a number"),
    ("layer-dropout-negative", linear, lambda o: QLoRALinear(o, dropout=-0.1), ValueError, "dropout must be in"),
    ("layer-dropout-str", linear, lambda o: QLoRALinear(o, dropout="0.1"), TypeError, "dropout must be a number"),
    ("layer-rslora-str", linear, lambda o: QLoRALinear(o, rslora="yes"), TypeError, "rslora must be a bool"),
    ("layer-init-none", linear, lambda o: QLoRALinear(o, init=None), ValueError, "init must be one of"),
    ("layer-init-upper", linear, lambda o: QLoRALinear(o, init="PISSA"), ValueError, "init must be one of"),
    ("layer-blocksize-float", linear, lambda o: QLoRALinear(o, blocksize=64.0), TypeError, "blocksize must be an int"),
    ("layer-blocksize-bool", linear, lambda o: QLoRALinear(o, blocksize=True), TypeError, "blocksize must be an int"),
    ("layer-blocksize-zero", linear, lambda o: QLoRALinear(o, blocksize=0), ValueError, "blocksize must be a power"),
    ("layer-blocksize-63-bnb", linear, lambda o: QLoRALinear(o, blocksize=63, backend="bitsandbytes"), ValueError,
     "blocksize must be a power of two"),
    ("layer-blocksize-8192", linear, lambda o: QLoRALinear(o, blocksize=8192), ValueError, "blocksize must be"),
    ("layer-double-quant-none", linear, lambda o: QLoRALinear(o, double_quant=None), TypeError,
     "double_quant must be a bool"),
    ("layer-double-quant-int", linear, lambda o: QLoRALinear(o, double_quant=0), TypeError, "double_quant must be"),
    ("layer-compute-none", linear, lambda o: QLoRALinear(o, compute_dtype=None), TypeError,
     "compute_dtype must be a torch.dtype"),
    ("layer-compute-int", linear, lambda o: QLoRALinear(o, compute_dtype=torch.int32), ValueError,
     "compute_dtype must be one of"),
    ("layer-backend-empty", linear, lambda o: QLoRALinear(o, backend=""), ValueError, "backend must be one of"),
    ("layer-backend-upper", linear, lambda o: QLoRALinear(o, backend="LORAKIT"), ValueError, "backend must be one of"),
    ("layer-backend-list", linear, lambda o: QLoRALinear(o, backend=["lorakit"]), TypeError, "backend must be one of"),
    ("layer-adapter-float64", linear, lambda o: QLoRALinear(o, adapter_dtype=torch.float64), ValueError,
     "adapter_dtype must be one of"),
    ("layer-adapter-none", linear, lambda o: QLoRALinear(o, adapter_dtype=None), TypeError,
     "adapter_dtype must be a torch.dtype"),
    ("layer-pissa-rank", linear, lambda o: QLoRALinear(o, r=33, init="pissa"), ValueError, "PiSSA needs r singular"),
    # ---- QLoRALinear methods
    ("merge-requantize-int", layer, lambda o: o.merge(requantize=1), TypeError, "requantize must be a bool"),
    ("merge-requantize-none", layer, lambda o: o.merge(requantize=None), TypeError, "requantize must be a bool"),
    ("merge-dtype-str", layer, lambda o: o.merge(dtype="bf16"), TypeError, "dtype must be a torch.dtype"),
    ("merge-dtype-float64", layer, lambda o: o.merge(dtype=torch.float64), ValueError, "dtype must be one of"),
    ("merge-dtype-int8", layer, lambda o: o.merge(requantize=True, dtype=torch.int8), ValueError, "dtype must be"),
    ("merge-nan-adapter", lambda: _nan_adapter(layer()), lambda o: o.merge(), ValueError, "NaN or inf"),
    ("merge-fp16-overflow", lambda: _huge_adapter(layer()), lambda o: o.merge(dtype=torch.float16), ValueError,
     r"non-finite weights \(stored in torch.float16\)"),
    ("check-merge-requantize-str", layer, lambda o: o.check_merge(requantize="no"), TypeError, "requantize must"),
    ("check-merge-dtype-float64", layer, lambda o: o.check_merge(dtype=torch.float64), ValueError, "dtype must be"),
    ("check-merge-nan", lambda: _nan_adapter(layer()), lambda o: o.check_merge(requantize=True), ValueError, "NaN"),
    ("merged-weight-merged", merged_layer, lambda o: o.merged_weight(), RuntimeError, "merged already"),
    ("layer-dequantized-float64", layer, lambda o: o.dequantized_weight(torch.float64), ValueError, "dtype must be"),
    ("layer-dequantized-str", layer, lambda o: o.dequantized_weight("fp32"), TypeError, "dtype must be a torch.dtype"),
    ("layer-forward-long", layer, lambda o: o(XL), TypeError, "x must be a floating-point tensor"),
    ("layer-forward-narrow", layer, lambda o: o(X_NARROW), ValueError, "x has 63 features"),
    ("layer-forward-list", layer, lambda o: o([1.0] * 64), TypeError, "x must be a floating-point tensor"),
    ("layer-reset-bad-init", layer, lambda o: o.reset_lora_parameters("svd"), ValueError, "init must be one of"),
    # ---- NF4Linear
    ("nf4linear-tensor", None, lambda o: NF4Linear(torch.randn(8, 64), None), TypeError, "quantized must be a"),
    ("nf4linear-none", None, lambda o: NF4Linear(None, None), TypeError, "quantized must be a lorakit.nf4"),
    ("nf4linear-1d", None, lambda o: NF4Linear(nf4.quantize_nf4(torch.randn(64)), None), ValueError, "2-D weight"),
    ("nf4linear-3d", None, lambda o: NF4Linear(nf4.quantize_nf4(torch.randn(2, 4, 64)), None), ValueError, "2-D"),
    ("nf4linear-bias-shape", None, lambda o: NF4Linear(q2d(), torch.zeros(31)), ValueError, r"bias must have shape"),
    ("nf4linear-bias-int", None, lambda o: NF4Linear(q2d(), torch.zeros(32, dtype=torch.long)), TypeError,
     "bias must be a floating-point tensor"),
    ("nf4linear-bias-list", None, lambda o: NF4Linear(q2d(), [0.0] * 32), TypeError, "bias must be a floating"),
    ("nf4linear-compute", None, lambda o: NF4Linear(q2d(), None, compute_dtype=torch.float64), ValueError,
     "compute_dtype must be one of"),
    ("nf4linear-storage-float64", None, lambda o: NF4Linear(q2d(), None, quant_storage=torch.float64), ValueError,
     "quant_storage must be one of"),
    ("nf4linear-storage-str", None, lambda o: NF4Linear(q2d(), None, quant_storage="uint8"), TypeError,
     "quant_storage must be a torch.dtype"),
    ("nf4linear-storage-odd-bytes", None, lambda o: NF4Linear(nf4.quantize_nf4(torch.randn(3, 34)), None,
                                                             quant_storage=torch.float32), ValueError,
     r"quant_storage=torch.float32 needs the packed byte count \(51\)"),
    ("nf4linear-nan-absmax", None, lambda o: NF4Linear(nan_absmax(), None), ValueError,
     r"QuantizedTensor.absmax must hold finite values >= 0.*NaN"),
    ("nf4linear-negative-absmax", None, lambda o: NF4Linear(negative_absmax(), None), ValueError,
     r"QuantizedTensor.absmax .*negative"),
    ("nf4linear-from-linear-conv", conv, lambda o: NF4Linear.from_linear(o), TypeError, "linear must be an nn.Linear"),
    ("nf4linear-from-linear-blocksize", linear, lambda o: NF4Linear.from_linear(o, blocksize=63), ValueError,
     "blocksize must be a power"),
    ("nf4linear-from-linear-nan", lambda: _with(linear(), float("nan")), lambda o: NF4Linear.from_linear(o),
     ValueError, "contains NaN or inf"),
    ("nf4linear-from-weight-list", None, lambda o: NF4Linear.from_weight([[1.0]]), AttributeError, "detach"),
    ("nf4linear-from-weight-int", None, lambda o: NF4Linear.from_weight(torch.ones(4, 64, dtype=torch.int32)),
     TypeError, "w must be float32, bfloat16 or float16"),
    ("nf4linear-from-weight-dtype", None, lambda o: NF4Linear.from_weight(torch.randn(4, 64), dtype=torch.float64),
     ValueError, "dtype must be one of"),
    ("nf4linear-from-weight-double-quant", None, lambda o: NF4Linear.from_weight(torch.randn(4, 64),
                                                                                double_quant="no"), TypeError,
     "double_quant must be a bool"),
    ("nf4linear-forward-long", base, lambda o: o(XL), TypeError, "x must be a floating-point tensor"),
    ("nf4linear-forward-narrow", base, lambda o: o(X_NARROW), ValueError, "x has 63 features"),
    ("nf4linear-forward-none", base, lambda o: o(None), TypeError, "x must be a floating-point tensor"),
    ("nf4linear-dequantized-float64", base, lambda o: o.dequantized_weight(torch.float64), ValueError, "dtype must"),
    ("nf4linear-dequantized-str", base, lambda o: o.dequantized_weight("bf16"), TypeError, "dtype must be a torch"),
    # ---- apply_qlora
    ("apply-model-str", None, lambda o: apply_qlora("model", LoRAConfig()), TypeError, "model must be an nn.Module"),
    ("apply-config-dict", model, lambda o: apply_qlora(o, {"r": 8}), TypeError, "config must be a LoRAConfig"),
    ("apply-config-adalora", model, lambda o: apply_qlora(o, lorakit.AdaLoRAConfig(total_step=5)), TypeError,
     "config must be a LoRAConfig"),
    ("apply-no-match", model, lambda o: apply_qlora(o, LoRAConfig(target_modules=["nope"])), ValueError,
     "matched no nn.Linear"),
    ("apply-regex-no-match", model, lambda o: apply_qlora(o, LoRAConfig(target_modules=r"layers\.7\..*")), ValueError,
     "matched no nn.Linear"),
    ("apply-norm-target", model, lambda o: apply_qlora(o, LoRAConfig(target_modules=["norm"])), ValueError,
     "but only nn.Linear"),
    ("apply-embedding-target", model, lambda o: apply_qlora(o, LoRAConfig(target_modules=["embed"])), ValueError,
     "but only nn.Linear|matched no nn.Linear"),
    ("apply-blocksize-63", model, lambda o: apply_qlora(o, LoRAConfig(), blocksize=63), ValueError,
     "blocksize must be a power"),
    ("apply-blocksize-str", model, lambda o: apply_qlora(o, LoRAConfig(), blocksize="64"), TypeError,
     "blocksize must be an int"),
    ("apply-compute-float64", model, lambda o: apply_qlora(o, LoRAConfig(), compute_dtype=torch.float64), ValueError,
     "compute_dtype must be one of"),
    ("apply-compute-str", model, lambda o: apply_qlora(o, LoRAConfig(), compute_dtype="bf16"), TypeError,
     "compute_dtype must be a torch.dtype"),
    ("apply-adapter-dtype-int", model, lambda o: apply_qlora(o, LoRAConfig(), adapter_dtype=torch.int8), ValueError,
     "adapter_dtype must be one of"),
    ("apply-backend-none", model, lambda o: apply_qlora(o, LoRAConfig(), backend=None), TypeError,
     "backend must be one of"),
    ("apply-backend-gptq", model, lambda o: apply_qlora(o, LoRAConfig(), backend="gptq"), ValueError,
     "backend must be one of"),
    ("apply-double-quant-str", model, lambda o: apply_qlora(o, LoRAConfig(), double_quant="yes"), TypeError,
     "double_quant must be a bool"),
    ("apply-use-dora", model, lambda o: apply_qlora(o, LoRAConfig(use_dora=True)), ValueError, "use_dora=True"),
    ("apply-twice", qmodel, lambda o: apply_qlora(o, LoRAConfig(target_modules=["k_proj"]), blocksize=32), ValueError,
     "already has adapter layers"),
    ("apply-nan-last", lambda: _nan_last(tiny_lm()), lambda o: apply_qlora(o, LoRAConfig(target_modules="all-linear"),
                                                                          blocksize=32), ValueError, "needs finite"),
    # ---- merge_qlora / merge_and_unload / qlora_layers / merge_error
    ("merge-qlora-model-str", None, lambda o: merge_qlora("model"), TypeError, "model must be an nn.Module"),
    ("merge-qlora-no-qlora", model, lambda o: merge_qlora(o), ValueError, "no QLoRA layers to merge"),
    ("merge-qlora-lora-model", lambda: lorakit.apply_lora(tiny_lm(), LoRAConfig()), lambda o: merge_qlora(o),
     ValueError, "no QLoRA layers"),
    ("merge-qlora-requantize-str", qmodel, lambda o: merge_qlora(o, requantize="yes"), TypeError, "requantize must"),
    ("merge-qlora-dtype-float64", qmodel, lambda o: merge_qlora(o, dtype=torch.float64), ValueError, "dtype must"),
    ("merge-qlora-dtype-str", qmodel, lambda o: merge_qlora(o, dtype="bf16"), TypeError, "dtype must be a torch.dtype"),
    ("merge-and-unload-dtype", qmodel, lambda o: merge_and_unload(o, dtype=torch.int32), ValueError, "dtype must"),
    ("merge-qlora-nan-layer", lambda: _nan_adapter(qmodel()), lambda o: merge_qlora(o, requantize=True), ValueError,
     r"layer 'layers\.\d\.self_attn\.(q|v)_proj'.*NaN"),
    ("qlora-layers-str", None, lambda o: qlora_layers("model"), TypeError, "model must be an nn.Module"),
    ("merge-error-linear", None, lambda o: merge_error(linear(), X), TypeError, "layer must be a QLoRALinear"),
    ("merge-error-long", layer, lambda o: merge_error(o, XL), TypeError, "x must be a floating-point"),
    ("merge-error-narrow", layer, lambda o: merge_error(o, X_NARROW), ValueError, "x must have 64 features"),
    ("merge-error-scalar", layer, lambda o: merge_error(o, torch.tensor(1.0)), ValueError, "x must have 64 features"),
    ("merge-error-list", layer, lambda o: merge_error(o, [1.0]), TypeError, "x must be a floating-point"),
    ("merge-error-merged", merged_layer, lambda o: merge_error(o, X), ValueError, "layer is merged"),
    # ---- bitsandbytes backend and the load check
    ("bnb-from-linear-dtype", linear, lambda o: bnb_linear4bit_from_linear(o, 32, dtype=torch.float64), ValueError,
     "dtype must be one of"),
    ("install-load-check-str", None, lambda o: install_load_check("model"), TypeError, "module must be an nn.Module"),
]


def _with(module: nn.Linear, value: float) -> nn.Linear:
    with torch.no_grad():
        module.weight[-1, -1] = value
    return module


def _nan_last(m: nn.Module) -> nn.Module:
    with torch.no_grad():
        m.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    return m


def _nan_adapter(m: nn.Module) -> nn.Module:
    layers = [m] if isinstance(m, QLoRALinear) else list(qlora_layers(m).values())
    with torch.no_grad():
        layers[-1].lora_B[0, 0] = float("nan")
    return m


def _huge_adapter(m: QLoRALinear) -> QLoRALinear:
    with torch.no_grad():
        m.lora_B.fill_(1e6)
    return m


def test_case_ids_are_distinct():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 100


@pytest.mark.parametrize(("make", "call", "exc", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(make, call, exc, match):
    obj = make() if make is not None else None
    before = snapshot(obj) if isinstance(obj, nn.Module) else None
    with pytest.raises(exc, match=match):
        call(obj)
    if before is not None:
        assert_unchanged(obj, before)


def test_a_mutated_quantized_tensor_is_caught_by_the_checked_functions():
    """Item 11: a QuantizedTensor whose absmax was mutated to NaN or a negative value after it was made."""
    for bad in (nan_absmax(), negative_absmax()):
        for fn in (nf4.dequantize_4bit, nf4.dequantize_nf4, lambda q: dataclasses.replace(q)):
            with pytest.raises(ValueError, match=r"QuantizedTensor\.absmax must hold finite values >= 0"):
                fn(bad)
