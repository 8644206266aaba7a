"""``predict`` then ``test`` on the toy sampling configs: SamplingModule grades shards of points (1D mixture, 2D
fractal) the way it grades images, through the real CLI.

Oracle: the judge's accuracy on the shards computed here from the shard files with numpy and the judge's own
network (not through the SamplingModule, the Judge wrapper or the metrics), and the sample counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import CONFIGS, cli

from lightning_guidance.nets import TrainedClassifier

FAMILIES = {
    "toy1d": ("toy/cfg_1d.yaml", "toy/classifier_1d.yaml", "toy/sampling.yaml",
              "{class_path: lightning_guidance.data.toy.Mixture1DDataModule, "
              "init_args: {n_train: 512, n_val: 200, batch_size: 64, seed: 0}}"),
    "fractal": ("fractal/cfg.yaml", "fractal/classifier.yaml", "fractal/sampling.yaml",
                "{class_path: lightning_guidance.data.toy.Fractal2DDataModule, "
                "init_args: {n_train: 512, n_val: 200, batch_size: 64, seed: 0}}"),
}
QUIET = ("--trainer.enable_progress_bar", "false")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_predict_then_test_grades_toy_shards(tmp_path, family):
    cfg_yaml, classifier_yaml, sample_yaml, data = FAMILIES[family]
    small_data = ("--data", data)
    cli("fit", "--config", CONFIGS / cfg_yaml, "--trainer.default_root_dir", tmp_path / "cfg",
        "--trainer.max_steps", "20", *QUIET, *small_data)
    cli("fit", "--config", CONFIGS / classifier_yaml, "--trainer.default_root_dir", tmp_path / "judge",
        "--trainer.max_steps", "40", "--model.init_args.noisy", "false", *QUIET, *small_data)
    judge_ckpt = tmp_path / "judge" / "checkpoints" / "last.ckpt"
    out = tmp_path / "samples"
    sampling = ["--config", CONFIGS / sample_yaml, "--trainer.default_root_dir", out, *QUIET,
                "--model.init_args.checkpoint", tmp_path / "cfg" / "checkpoints" / "last.ckpt",
                "--model.init_args.output_dir", out, "--model.init_args.samples_per_class", "12",
                "--model.init_args.shard_size", "10", "--model.init_args.batch_size", "16",
                "--model.init_args.sampler_kwargs", "{num_steps: 3}", "--model.init_args.sweep.values", "[1.0, 3.0]"]
    cli("predict", *sampling)
    judge = (tmp_path / "judge.yaml")
    judge.write_text("model:\n  init_args:\n    judge:\n      class_path: lightning_guidance.metrics.judge.Judge\n"
                     f"      init_args: {{checkpoint: {judge_ckpt}}}\n    fd_name: fd_{family}\n"
                     f"data: {data}\n")
    cli("test", *sampling, "--config", judge)

    table = json.loads((out / "metrics_table.json").read_text())
    assert table["real_data"] in ("Mixture1DDataModule", "Fractal2DDataModule")
    assert table["num_real_samples"] == 200
    net = TrainedClassifier(str(judge_ckpt)).net
    for row in table["rows"]:
        shards = sorted((out / f"cfg_{row['value']:g}").glob("shard_*.npz"))
        points = np.concatenate([np.load(p)["points"] for p in shards])
        labels = np.concatenate([np.load(p)["labels"] for p in shards])
        assert points.shape == (24, 1 if family == "toy1d" else 2) and row["num_samples"] == 24
        with torch.no_grad():
            predicted = net(torch.from_numpy(points), None).argmax(1).numpy()
        assert row["metrics"]["judge_accuracy"] == pytest.approx(float((predicted == labels).mean()), abs=1e-6)
        assert np.isfinite(row["metrics"][f"fd_{family}"]) and 0 <= row["metrics"]["recall"] <= 1
    # header, two scales, the real-data row, the real-vs-real floor
    assert (out / "metrics_table.md").read_text().count("\n| ") == 5
