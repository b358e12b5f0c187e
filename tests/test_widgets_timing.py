"""Tests of the pure functions behind the widgets and of ``lorakit.timing`` (no timing asserts beyond > 0)."""

from __future__ import annotations

import math

import pytest

from lorakit.memory import llama_parameter_count, lora_parameter_count, training_bytes
from lorakit.timing import measure, measure_interleaved
from lorakit.widgets import lora_parameter_summary, memory_summary, scaling_summary


# --------------------------------------------------------------------------- lora_parameter_summary
def test_lora_parameter_summary():
    s = lora_parameter_summary(4096, 4096, 8)
    assert s["lora"] == 8 * (4096 + 4096) == 65_536
    assert s["full"] == 4096 * 4096
    assert s["fraction"] == pytest.approx(65_536 / 4096**2)
    assert s["savings"] == pytest.approx(256.0)
    assert s["fraction"] * s["savings"] == pytest.approx(1.0)


def test_lora_parameter_summary_rectangular():
    s = lora_parameter_summary(4096, 11008, 16)
    assert s["lora"] == 16 * (4096 + 11008) and s["full"] == 4096 * 11008


@pytest.mark.parametrize(
    "args, match",
    [((0, 8, 2), "d_in"), ((8, -1, 2), "d_out"), ((8, 8, 0), "r must"), ((8, 8, 2.0), "r must"),
     ((8.0, 8, 2), "d_in"), ((True, 8, 2), "d_in"), ((8, 8, None), "r must")],
)
def test_lora_parameter_summary_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        lora_parameter_summary(*args)


# --------------------------------------------------------------------------- scaling_summary
@pytest.mark.parametrize("r, alpha", [(1, 1), (8, 16), (64, 16), (256, 512.0)])
def test_scaling_summary(r, alpha):
    s = scaling_summary(r, alpha)
    assert s["r"] == r and s["alpha"] == alpha
    assert s["lora"] == pytest.approx(alpha / r)
    assert s["rslora"] == pytest.approx(alpha / math.sqrt(r))
    assert s["rslora_over_lora"] == pytest.approx(math.sqrt(r))


@pytest.mark.parametrize(
    "r, alpha, exc",
    [(0, 8, ValueError), (-4, 8, ValueError), (8, 0, ValueError), (8, -1, ValueError), (2.5, 8, TypeError)],
)
def test_scaling_summary_bad_input(r, alpha, exc):
    with pytest.raises(exc, match="r must|alpha must"):
        scaling_summary(r, alpha)


# --------------------------------------------------------------------------- memory_summary
@pytest.mark.parametrize("size", ["7B", "13B", "33B", "65B"])
def test_memory_summary(size):
    s = memory_summary(size, 16)
    n = llama_parameter_count(size)
    n_lora = lora_parameter_count(size, 16)
    assert s["params"] == n and s["lora_params"] == n_lora
    assert s["full_gib"] == pytest.approx(16 * n / 2**30)
    assert s["lora_gib"] == pytest.approx(training_bytes(n + n_lora, n_lora).total / 2**30)
    assert s["ratio"] == pytest.approx(s["full_gib"] / s["lora_gib"])
    assert 7 < s["ratio"] < 8  # frozen weights at 2 B vs 16 B: LoRA ~ 8x less, a bit under


def test_memory_summary_7b_values():
    s = memory_summary("7B", 8, ("q_proj", "v_proj"))
    assert s["lora_params"] == 4_194_304
    assert s["full_gib"] == pytest.approx(100.4, abs=0.1)  # 16 * 6.738e9 B
    assert s["lora_gib"] == pytest.approx(12.61, abs=0.01)


def test_memory_summary_targets_change_lora_params():
    small = memory_summary("7B", 8, ("q_proj",))
    big = memory_summary("7B", 8, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    assert big["lora_params"] > small["lora_params"] and big["lora_gib"] > small["lora_gib"]


@pytest.mark.parametrize(
    "args, match",
    [(("7b", 8), "size"), (("1B", 8), "size"), (("7B", 0), "r must"), (("7B", 8, ("lm_head",)), "lm_head")],
)
def test_memory_summary_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        memory_summary(*args)


# --------------------------------------------------------------------------- timing
def work() -> int:
    return sum(range(200))


def test_measure_positive_and_calls_fn():
    calls = []

    def fn():
        calls.append(1)
        return work()

    t = measure(fn, repeats=5, warmup=2)
    assert isinstance(t, float) and t > 0
    assert len(calls) == 7


def test_measure_interleaved_positive_and_calls_each():
    counts = {"a": 0, "b": 0}

    def make(name):
        def fn():
            counts[name] += 1
            return work()
        return fn

    result = measure_interleaved({"a": make("a"), "b": make("b")}, repeats=4, warmup=1)
    assert set(result) == {"a", "b"}
    assert all(isinstance(v, float) and v > 0 for v in result.values())
    assert counts == {"a": 5, "b": 5}


def test_measure_with_cpu_device():
    assert measure(work, repeats=2, warmup=0, device="cpu") > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [({"repeats": 0}, "repeats"), ({"repeats": -1}, "repeats"), ({"repeats": 2.5}, "repeats"),
     ({"warmup": -1}, "warmup"), ({"warmup": 1.5}, "warmup")],
)
def test_measure_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        measure(work, **kwargs)


def test_measure_interleaved_empty():
    with pytest.raises(ValueError, match="fns"):
        measure_interleaved({})


@pytest.mark.parametrize(
    "kwargs, match",
    [({"repeats": 0}, "repeats"), ({"repeats": 2.5}, "repeats"), ({"warmup": -1}, "warmup")],
)
def test_measure_interleaved_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        measure_interleaved({"a": work}, **kwargs)
