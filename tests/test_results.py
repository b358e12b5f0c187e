"""lorakit.results: stored results with provenance, and the per-seed summaries notebooks use."""

from __future__ import annotations

import json

import pytest

from lorakit.results import Timer, load_results, save_results, spread, steps_to_threshold


def test_save_and_load_round_trip(tmp_path):
    with Timer() as t:
        pass
    path = save_results("demo", {"a": [1, 2]}, seeds=[0, 1, 2], wall_seconds=t.seconds, command="x", directory=tmp_path)
    raw = json.loads(path.read_text())
    assert raw["results"] == {"a": [1, 2]}
    prov = raw["provenance"]
    assert prov["command"] == "x" and prov["seeds"] == [0, 1, 2] and "torch" in prov["versions"]
    assert prov["machine"]["cores"] >= 1
    assert load_results("demo", directory=tmp_path) == raw


@pytest.mark.parametrize("name", ["", "a/b", ".hidden", None, 3])
def test_bad_names(tmp_path, name):
    with pytest.raises(ValueError, match="name must be a plain file stem"):
        save_results(name, {}, seeds=[0], wall_seconds=0.0, directory=tmp_path)


def test_missing_results_say_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="make results"):
        load_results("nope", directory=tmp_path)
    with pytest.raises(TypeError, match="results must be a dict"):
        save_results("x", [1], seeds=[0], wall_seconds=0.0, directory=tmp_path)
    with pytest.raises(ValueError, match="allowed|Out of range|JSON|nan"):
        save_results("x", {"v": float("nan")}, seeds=[0], wall_seconds=0.0, directory=tmp_path)


def test_steps_to_threshold_and_spread():
    assert steps_to_threshold([50, 100, 150], [0.1, 0.95, 1.0], 0.9) == 100
    assert steps_to_threshold([50, 100], [0.1, 0.2], 0.9) is None
    with pytest.raises(ValueError, match="same length"):
        steps_to_threshold([1, 2], [0.1], 0.5)
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        steps_to_threshold([1], [0.1], float("nan"))
    s = spread([1.0, 2.0, 3.0])
    assert s == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "n": 3}
    assert spread([5])["std"] == 0.0
    with pytest.raises(ValueError, match="must not be empty"):
        spread([])
