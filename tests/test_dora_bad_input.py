"""Bad input to every public function of lorakit.dora (issue 9, items 4 and 8; notebook 09's API).

Each case asserts a clear TypeError/ValueError naming the argument; where a layer or model is involved,
that it is exactly as it was (``tests/snapshot.py``). ``apply_lora(use_dora=True)`` with a NaN weight in
its LAST target fails half-way (the DoRA direction of a NaN row is undefined) and is undone.
"""

from __future__ import annotations

import json

import pytest
import torch
from builders import tiny_lm
from safetensors.torch import load_file, save_file
from snapshot import assert_unchanged, snapshot
from torch import nn

import lorakit
from lorakit.dora import DoRALinear, dora_linear, dora_weight_norm, magnitude_direction_change

NAN, INF = float("nan"), float("inf")
QV = ["q_proj", "v_proj"]


def dora_layer(seed: int = 0) -> DoRALinear:
    torch.manual_seed(seed)
    layer = DoRALinear(nn.Linear(6, 5), r=2, alpha=4)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.3)
    return layer


# ------------------------------------------------------------------------------------------ DoRALinear


def _row(value: float):
    def base() -> nn.Linear:
        layer = nn.Linear(4, 3)
        with torch.no_grad():
            layer.weight[2, 1] = value
        return layer
    return base


def _zero_weight() -> nn.Linear:
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.zero_()
    return layer


@pytest.mark.parametrize(
    ("base", "kwargs", "error", "match"),
    [
        (_row(NAN), {}, ValueError, r"rows \[2\] of W0 \+ s\*B@A are zero or not finite"),
        (_row(INF), {}, ValueError, r"rows \[2\] of W0 \+ s\*B@A are zero or not finite"),
        (_zero_weight, {}, ValueError, r"rows \[0, 1, 2\] of W0"),
        (lambda: nn.Linear(4, 3), {"alpha": NAN}, ValueError, "alpha must be a finite number"),
        (lambda: nn.Linear(4, 3), {"alpha": "2"}, TypeError, "alpha must be a number"),
        (lambda: nn.Linear(4, 3), {"dropout": -0.5}, ValueError, "dropout must be in"),
        (lambda: nn.Linear(4, 3), {"dropout": "0"}, TypeError, "dropout must be a number"),
        (lambda: nn.Linear(4, 3), {"r": True}, TypeError, "r must be an int"),
        (lambda: nn.Linear(4, 3), {"init": "PISSA"}, ValueError, "init must be one of"),
        (lambda: nn.Bilinear(2, 2, 2), {}, TypeError, "base must be an nn.Linear for DoRA, got Bilinear"),
    ],
    ids=["nan-row", "inf-row", "zero-weight", "alpha-nan", "alpha-str", "dropout-negative", "dropout-str", "r-bool",
         "init-case", "bilinear"],
)
def test_dora_linear_layer_rejects_and_leaves_the_base(base, kwargs, error, match):
    layer = base()
    before = snapshot(layer)
    with pytest.raises(error, match=match):
        DoRALinear(layer, **{"r": 2, "alpha": 4, **kwargs})
    assert_unchanged(layer, before)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m: m.reset_lora_parameters("svd"), ValueError, "init must be one of"),
        (lambda m: (m.merge(), m.reset_lora_parameters("kaiming")), RuntimeError, "unmerge"),
        (lambda m: (m.magnitude.data.__setitem__(0, 0.0), m.check_merge()), ValueError, "could not be undone"),
        (lambda m: (m.magnitude.data.__setitem__(1, NAN), m.merge()), ValueError, "magnitude holds NaN"),
        (lambda m: (m.lora_A.data.__setitem__((0, 0), INF), m.merge()), ValueError, "lora_A/lora_B hold NaN"),
        (lambda m: (m.lora_B.data.fill_(0), m.base.weight.data.__setitem__(0, 0.0), m.merge()), ValueError,
         r"rows \[0\] of W0 \+ s\*B@A are zero"),
    ],
    ids=["reset-init", "reset-merged", "check-zero-magnitude", "merge-nan-magnitude", "merge-inf-A",
         "merge-zero-row"],
)
def test_dora_layer_methods_reject(call, error, match):
    layer = dora_layer()
    with pytest.raises(error, match=match):
        call(layer)
    if error is ValueError:  # a refused merge changed no weight and left the layer unmerged
        assert not layer.merged


def test_a_refused_merge_leaves_the_layer_exactly_as_it_was():
    layer = dora_layer()
    with torch.no_grad():
        layer.magnitude[3] = 0.0
    before = snapshot(layer)
    with pytest.raises(ValueError, match=r"rows \[3\]"):
        layer.merge()
    assert_unchanged(layer, before)


# ------------------------------------------------------------------------------------------ functions


W, A, B, M = torch.randn(3, 4), torch.randn(2, 4), torch.randn(3, 2), torch.ones(3)
X = torch.randn(5, 4)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"magnitude": "m"}, TypeError, "magnitude must be a torch.Tensor"),
        ({"magnitude": torch.ones(3, 1)}, ValueError, r"magnitude must have shape \(3,\)"),
        ({"bias": torch.ones(4)}, ValueError, r"bias must have shape \(3,\)"),
        ({"A": torch.randn(2, 5)}, ValueError, r"expected A \[r, 4\]"),
        ({"B": torch.randn(4, 2)}, ValueError, r"B \[3, r\]"),
        ({"B": torch.randn(3, 3)}, ValueError, r"expected A \[r, 4\] and B \[3, r\]"),
        ({"weight": torch.randn(12)}, ValueError, "weight, A, B must be 2-D"),
        ({"scaling": "1"}, TypeError, "scaling must be a Python number"),
        ({"scaling": True}, TypeError, "scaling must be a Python number"),
        ({"scaling": torch.tensor(1.0)}, TypeError, "scaling must be a Python number"),
        ({"dropout_p": "0.1"}, TypeError, "dropout_p must be a number"),
        ({"dropout_p": -0.1}, ValueError, "dropout_p must be in"),
        ({"x": [[1.0] * 4]}, TypeError, "x, weight, A and B must be torch.Tensor"),
        ({"x": torch.randn(5, 3)}, ValueError, "x has 3 features"),
    ],
)
def test_dora_linear_function_rejects(kwargs, error, match):
    args = {"x": X, "weight": W, "bias": None, "A": A, "B": B, "magnitude": M, "scaling": 1.0, **kwargs}
    with pytest.raises(error, match=match):
        dora_linear(**args)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (([[1.0]], A, B, 1.0), TypeError, "weight, A and B must be torch.Tensor"),
        ((W, torch.randn(8), B, 1.0), ValueError, "must be 2-D"),
        ((W, A, torch.randn(4, 2), 1.0), ValueError, r"expected A \[r, 4\] and B \[3, r\]"),
        ((W, torch.randn(3, 4), B, 1.0), ValueError, r"got A \(3, 4\) and B \(3, 2\)"),
        ((W, A, B, "1"), TypeError, "scaling must be a Python number"),
        ((W, A, B, NAN), ValueError, "scaling must be finite"),
        ((W, A, B, INF), ValueError, "scaling must be finite"),
    ],
)
def test_dora_weight_norm_rejects(args, error, match):
    with pytest.raises(error, match=match):
        dora_weight_norm(*args)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (([[1.0]], W), TypeError, "W_t and W_0 must be torch.Tensor"),
        ((W, torch.randn(3, 5)), ValueError, "same shape"),
        ((torch.randn(4), torch.randn(4)), ValueError, "must be 2-D"),
        ((torch.randn(2, 3, 4), torch.randn(2, 3, 4)), ValueError, "must be 2-D"),
        ((torch.ones(3, 4, dtype=torch.long), torch.ones(3, 4, dtype=torch.long)), TypeError, "floating-point"),
        ((torch.empty(0, 4), torch.empty(0, 4)), ValueError, "must not be empty"),
    ],
)
def test_magnitude_direction_change_rejects(args, error, match):
    with pytest.raises(error, match=match):
        magnitude_direction_change(*args)


def test_legal_edge_cases_give_the_right_result():
    assert magnitude_direction_change(W, W) == (0.0, pytest.approx(0.0, abs=1e-12))
    dm, dd = magnitude_direction_change(2 * W, W)  # pure magnitude change: no direction change
    assert dm == pytest.approx(W.double().norm(dim=1).mean().item(), rel=1e-9) and dd == pytest.approx(0, abs=1e-12)
    torch.testing.assert_close(dora_weight_norm(W, A, torch.zeros(3, 2), 5.0), W.norm(dim=1))  # B = 0: ||W0||


# ------------------------------------------------------------------------------------------ model level


def _nan_last_target(model: nn.Module) -> None:
    with torch.no_grad():
        model.layers[1].self_attn.v_proj.weight[4, 2] = NAN


def _zero_row_last_target(model: nn.Module) -> None:
    with torch.no_grad():
        model.layers[1].self_attn.v_proj.weight[7] = 0.0


@pytest.mark.parametrize(
    ("spoil", "error", "match"),
    [
        (_nan_last_target, ValueError, r"rows \[4\] of W0 \+ s\*B@A are zero or not finite"),
        (_zero_row_last_target, ValueError, "use_dora=True needs nonzero weight rows"),
    ],
    ids=["nan-weight-last-target", "zero-row-last-target"],
)
def test_apply_lora_with_dora_failing_in_the_last_target_is_undone(spoil, error, match):
    model = tiny_lm()
    spoil(model)
    before = snapshot(model)
    with pytest.raises(error, match=match):
        lorakit.apply_lora(model, lorakit.LoRAConfig(r=2, target_modules=QV, use_dora=True))
    assert_unchanged(model, before)


@pytest.fixture(scope="module")
def saved_dora(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dora")
    model = lorakit.apply_lora(tiny_lm(), lorakit.LoRAConfig(r=2, target_modules=QV, use_dora=True))
    lorakit.save_adapter(model, directory)
    return directory


def _magnitudes(tensors: dict) -> list[str]:
    return sorted(k for k in tensors if k.endswith("lora_magnitude_vector"))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t.__setitem__(_magnitudes(t)[0], torch.ones(31)), r"lora_magnitude_vector has shape \(31,\)"),
        (lambda t: t.__setitem__(_magnitudes(t)[-1], torch.full((32,), NAN)), "finite floating-point"),
        (lambda t: t.pop(_magnitudes(t)[1]), "missing"),
        (lambda t: t.__setitem__(_magnitudes(t)[0], torch.ones(32, dtype=torch.int64)), "finite floating-point"),
    ],
    ids=["magnitude-shape", "magnitude-nan", "one-magnitude-missing", "magnitude-int"],
)
@pytest.mark.parametrize("into", ["fresh", "dora"])
def test_load_of_a_bad_dora_file_leaves_the_model(saved_dora, tmp_path, edit, match, into):
    tensors = load_file(saved_dora / "adapter_model.safetensors")
    edit(tensors)
    save_file(tensors, tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text((saved_dora / "adapter_config.json").read_text())
    model = tiny_lm()
    if into == "dora":
        lorakit.apply_lora(model, lorakit.LoRAConfig(r=2, target_modules=QV, use_dora=True))
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        lorakit.load_adapter(model, tmp_path)
    assert_unchanged(model, before)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["use_dora"] is True
