"""bench/run_all.py: every benchmark's ratio lines become rows of one table, and the README block is replaced."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_run_all():
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "bench" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ratio_lines_and_table_rows_are_parsed():
    run_all = load_run_all()
    out = """machine: x
ratio lightning / plain (median of 3): 1.062 (goal <= 1.05)
time ratio (ours / diffusers): 0.958
| guidance kind                      |  seconds | x unguided |
|------------------------------------|----------|------------|
| unguided                           |    0.500 |       1.00 |
| off-the-shelf (x0_hat)             |    0.850 |       1.70 |
max |ours - diffusers|: 4.9e-06"""
    assert run_all.parse(out) == [("ratio lightning / plain (median of 3)", 1.062),
                                  ("time ratio (ours / diffusers)", 0.958), ("unguided / unguided", 1.0),
                                  ("off-the-shelf (x0_hat) / unguided", 1.7)]
    assert set(run_all.benchmarks()) >= {"lightning_vs_plain", "ddim_vs_diffusers", "guidance_cost",
                                         "cfg_batched_vs_two_calls"}


def test_the_readme_block_is_added_once_then_replaced(tmp_path):
    run_all = load_run_all()
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nhand-written notes\n")
    run_all.update_readme(readme, ["| a | b | 1.000 |"], "first")
    run_all.update_readme(readme, ["| a | b | 2.000 |"], "second")
    text = readme.read_text()
    assert "hand-written notes" in text and text.count(run_all.BEGIN) == 1
    assert "2.000" in text and "1.000" not in text and "second" in text
