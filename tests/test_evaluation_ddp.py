"""One process and two (gloo, CPU, ``strategy: ddp_spawn``) give the same figures, through the real CLI.

- Fréchet distance, precision/recall, judge accuracy and score: ``SamplingModule test`` of the same shards.
- ECE per time bucket, integral ECE and Smooth ECE: ``validate`` of a noisy classifier with ``CalibrationOverTime``.

The real split has an odd number of items (359) and batches of 64, so Lightning's distributed sampler pads one
rank with a repeat: had the repeat entered a metric, the two-process figures would differ (and the real-sample count
would read 360). The two-process runs are CLI subprocesses with a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CONFIGS, ROOT, cli
from test_sampling_test_stage import (
    judge_checkpoint,
    noisy_classifier_checkpoint,
    shards_dir,
    stage_args,
)

ODD_SPLIT = ("--data.init_args.val_fraction", "0.1995", "--data.init_args.batch_size", "64")  # 359 real items
TWO_PROCESSES = ("--trainer.strategy", "ddp_spawn", "--trainer.devices", "2", "--trainer.accelerator", "cpu")
TIMEOUT_S = 240


def run_cli_subprocess(args: list, tmp_path: Path) -> None:
    """Run the CLI in a new process group; on timeout the whole group (spawned ranks included) is killed."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "lightning_guidance.cli", *[str(a) for a in args]]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"two-process run did not finish in {TIMEOUT_S} s:\n{output[-4000:]}")
    assert proc.returncode == 0, f"two-process run failed:\n{output[-4000:]}"


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
    run_cli_subprocess([*stage_args(ckpt, two, judge, *ODD_SPLIT), *TWO_PROCESSES], tmp_path)
    table_one = json.loads((one / "metrics_table.json").read_text())
    table_two = json.loads((two / "metrics_table.json").read_text())
    assert table_one["num_real_samples"] == table_two["num_real_samples"] == 359
    assert [r["num_samples"] for r in table_two["rows"]] == [70, 70]
    for row_one, row_two in zip(table_one["rows"], table_two["rows"]):
        assert_same_figures(row_one["metrics"], row_two["metrics"], f"scale {row_one['scale']}")
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
            run_cli_subprocess([*args, *TWO_PROCESSES], tmp_path)
        figures[name] = json.loads((tmp_path / name / "logs" / "calibration" / "latest.json").read_text())
    assert {"ece", "smooth_ece", "acc", "ece_t0.00-0.25", "smooth_ece_t0.75-1.00"} <= figures["one"].keys()
    assert_same_figures(figures["one"], figures["two"], "calibration")
    print("1 vs 2 processes, calibration:", json.dumps(figures["two"]))
