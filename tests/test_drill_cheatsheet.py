"""The cheat sheet of notebook 14: every worked value comes from lorakit, and every row names a notebook."""

from __future__ import annotations

from lorakit.drill import cheat_sheet, cheat_sheet_markdown, cheat_sheet_text
from lorakit.drill import compute as c
from lorakit.drill.links import NOTEBOOKS_DIR
from lorakit.memory import lora_parameter_count


def test_rows_name_existing_notebooks():
    rows = cheat_sheet()
    assert len(rows) >= 20
    existing = {p.name[:2] for p in NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb")}
    assert {r.notebook for r in rows} <= existing


def test_values_are_lorakit_values():
    text = cheat_sheet_text()
    assert f"{lora_parameter_count('7B', 8):,}" in text
    assert f"{c.nf4_bits_per_param(64, True):.4g} bits/weight" in text
    assert f"{c.training_gib('7B', 'full'):.1f} GiB" in text
    assert f"{c.adalora_budget(450, 144, 48, 100, 200, 1000)} at step 450" in text
    assert "\\|\\partial L/\\partial A\\| = 0" in text


def test_markdown_is_one_table():
    md = cheat_sheet_markdown().splitlines()
    assert md[0].startswith("| topic |") and md[1].startswith("| --- |")
    assert len(md) == len(cheat_sheet()) + 2 and all(line.count(" | ") >= 3 for line in md)
