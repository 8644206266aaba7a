"""One process and two (gloo, CPU, ``strategy: ddp_spawn``) give the same figures, through the real CLI.

- Fréchet distance, precision/recall, judge accuracy and score: ``SamplingModule test`` of the same shards.
- ECE per time bucket, integral ECE and Smooth ECE: ``validate`` of a noisy classifier with ``CalibrationOverTime``.

The real split has an odd number of items (359) and batches of 64, so Lightning's distributed sampler pads one
rank with a repeat: had the repeat entered a metric, the two-process figures would differ (and the real-sample count
would read 360). The two ranks are spawned from the test's process (helpers.cli_on_two_processes).
"""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import CONFIGS, cli, cli_on_two_processes
from test_sampling_test_stage import (
    judge_checkpoint,
    noisy_classifier_checkpoint,
    shards_dir,
    stage_args,
)

ODD_SPLIT = ("--data.init_args.val_fraction", "0.1995", "--data.init_args.batch_size", "64")  # 359 real items
TIMEOUT_S = 240


def assert_same_figures(one: dict, two: dict, where: str) -> None:
    assert one.keys() == two.keys(), where
    for key, value in one.items():
        if isinstance(value, dict):
            assert_same_figures(value, two[key], f"{where}.{key}")
        elif isinstance(value, float):
            assert two[key] == pytest.approx(value, rel=1e-6, abs=1e-9), f"{where}.{key}: {value} vs {two[key]}"
        else:
            assert two[key] == value, f"{where}.{key}"


@pytest.mark.timeout(2 * TIMEOUT_S)
def test_sample_quality_one_vs_two_processes(tmp_path, tmp_path_factory):
    judge = judge_checkpoint(tmp_path_factory)
    ckpt, shards = shards_dir(tmp_path_factory)
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(shards, one)
    shutil.copytree(shards, two)
    cli(*stage_args(ckpt, one, judge, *ODD_SPLIT))
    cli_on_two_processes(*stage_args(ckpt, two, judge, *ODD_SPLIT))
    table_one = json.loads((one / "metrics_table.json").read_text())
    table_two = json.loads((two / "metrics_table.json").read_text())
    assert table_one["num_real_samples"] == table_two["num_real_samples"] == 359
    assert [r["num_samples"] for r in table_two["rows"]] == [70, 70]
    for row_one, row_two in zip(table_one["rows"], table_two["rows"]):
        assert_same_figures(row_one["metrics"], row_two["metrics"], f"value {row_one['value']}")
    assert_same_figures(table_one["real"], table_two["real"], "real")
    print("1 vs 2 processes, sample quality:", json.dumps([r["metrics"] for r in table_two["rows"]]))


CALIBRATION_CALLBACK = """
trainer:
  callbacks:
    - class_path: lightning_guidance.callbacks.calibration.CalibrationOverTime
      init_args: {seed: 5}
"""


@pytest.mark.timeout(2 * TIMEOUT_S)
def test_calibration_over_time_one_vs_two_processes(tmp_path, tmp_path_factory):
    ckpt = noisy_classifier_checkpoint(tmp_path_factory)
    (tmp_path / "callbacks.yaml").write_text(CALIBRATION_CALLBACK)
    figures = {}
    for name in ("one", "two"):
        args = ["validate", "--config", CONFIGS / "digits/classifier.yaml", "--config", tmp_path / "callbacks.yaml",
                "--trainer.default_root_dir", tmp_path / name, "--trainer.enable_progress_bar", "false",
                "--ckpt_path", ckpt, *ODD_SPLIT]
        if name == "one":
            cli(*args)
        else:
            cli_on_two_processes(*args)
        figures[name] = json.loads((tmp_path / name / "logs" / "calibration" / "latest.json").read_text())
    assert {"ece", "smooth_ece", "acc", "ece_t0.00-0.25", "smooth_ece_t0.75-1.00"} <= figures["one"].keys()
    assert_same_figures(figures["one"], figures["two"], "calibration")
    print("1 vs 2 processes, calibration:", json.dumps(figures["two"]))
