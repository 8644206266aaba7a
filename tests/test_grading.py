"""``test`` reads what ``predict`` wrote: ``GradeSamples`` grades a folder from its manifest (or its shards) with only
a grading config, by the exact density on toy data (scipy as the oracle) and by the judge on images (the same
figures as ``SamplingModule``'s own test on the same shards)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import CONFIGS, cli, tiny_digits_fit
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from lightning_guidance.io.shards import read_shard, shard_paths, write_sample_folder
from lightning_guidance.toy import fractal_2d
from lightning_guidance.toy.mixture1d import two_class_mixture_1d


def exact_folder(tmp_path, mixture, n: int, values=(1.0, 3.0)):
    """A sample folder holding exact draws of ``mixture`` at each sweep value, and a ``predict`` config.yaml."""
    gen = torch.Generator().manual_seed(0)
    sets = {v: mixture.sample(n, generator=gen) for v in values}
    folder = tmp_path / "samples"
    write_sample_folder(folder, {v: (x.float(), y) for v, (x, y) in sets.items()}, source="exact draws")
    (folder / "config.yaml").write_text("# what predict wrote\n")
    return folder


def scipy_scores(mixture, folder):
    """Mean log p(x|y) and the Bayes wrong-class share of a folder's samples, from scipy's Gaussian densities."""
    shards = [read_shard(p) for p in shard_paths(folder)]
    x = torch.cat([s.samples for s in shards]).double().numpy().reshape(-1, mixture.dim)
    y = torch.cat([s.labels for s in shards]).numpy()
    labels, weights = mixture.component_labels.numpy(), mixture.weights.numpy()
    comp = np.stack([multivariate_normal(m.numpy(), c.numpy()).logpdf(x) for m, c in zip(mixture.means, mixture.covs)],
                    axis=1).reshape(len(x), -1) + np.log(weights)
    joint = np.stack([logsumexp(comp[:, labels == k], axis=1) for k in range(mixture.num_classes)], axis=1)
    class_weight = np.array([weights[labels == k].sum() for k in range(mixture.num_classes)])
    log_density = joint[np.arange(len(x)), y] - np.log(class_weight[y])
    return log_density.mean(), (joint.argmax(axis=1) != y).mean()


@pytest.mark.parametrize("config, mixture", [("toy/grade_1d.yaml", two_class_mixture_1d(1.0, 0.05)),
                                             ("fractal/grade.yaml", fractal_2d((0, 1)))], ids=["1d", "fractal"])
def test_exact_grading_of_a_folder(tmp_path, config, mixture):
    folder = exact_folder(tmp_path, mixture, 400)
    cli("test", "--config", CONFIGS / config, "--model.init_args.samples", folder,
        "--trainer.enable_progress_bar", "false")
    table = json.loads((folder / "metrics_table.json").read_text())
    assert [r["value"] for r in table["rows"]] == [1.0, 3.0] and table["grader"] == "exact density"
    for row, value in zip(table["rows"], (1.0, 3.0)):
        oracle_log_density, oracle_wrong = scipy_scores(mixture, folder / f"cfg_{value:g}")
        m = row["metrics"]
        assert m["mean_log_density"] == pytest.approx(oracle_log_density, rel=1e-6)
        assert m["wrong_class_fraction"] == pytest.approx(oracle_wrong, abs=1e-12)
        assert 0.8 < m["spread"] < 1.25 and m["recall"] > 0.7  # exact draws: the true spread, most of the mass
    assert (folder / "config.yaml").read_text() == "# what predict wrote\n"  # predict's config kept
    assert "GradeSamples" in (folder / "test_config.yaml").read_text()


def test_a_folder_without_manifest_is_graded_from_its_shards(tmp_path):
    """A post-processor's output has no manifest: the shards' own configs say what they are."""
    mixture = two_class_mixture_1d(1.0, 0.05)
    folder = exact_folder(tmp_path, mixture, 200, values=(2.0,))
    (folder / "manifest.json").unlink()
    cli("test", "--config", CONFIGS / "toy/grade_1d.yaml", "--model.init_args.samples", folder,
        "--trainer.enable_progress_bar", "false")
    row = json.loads((folder / "metrics_table.json").read_text())["rows"][0]
    assert row["value"] == 2.0 and row["metrics"]["mean_log_density"] == pytest.approx(
        scipy_scores(mixture, folder / "cfg_2")[0], rel=1e-6)


TINY_JUDGE = ["--model.init_args.net.init_args.hidden_dim", "16", "--data.init_args.batch_size", "64",
              "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false"]


def test_judge_grading_of_a_predict_folder_equals_sampling_modules_test(tmp_path):
    """Only the folder and the grading config: the same figures as the sampling config's own test stage."""
    ckpt = tiny_digits_fit(tmp_path / "cfg", 2)
    cli("fit", "--config", CONFIGS / "digits/judge.yaml", "--trainer.default_root_dir", tmp_path / "judge", *TINY_JUDGE)
    judge = tmp_path / "judge" / "checkpoints" / "last.ckpt"
    out = tmp_path / "samples"
    sampling = ["--config", CONFIGS / "digits/sampling.yaml", "--trainer.default_root_dir", out,
                "--trainer.enable_progress_bar", "false", "--model.init_args.checkpoint", ckpt,
                "--model.init_args.output_dir", out, "--model.init_args.samples_per_class", "2",
                "--model.init_args.sampler_kwargs", "{num_steps: 2}", "--model.init_args.sweep.values", "[1.0, 2.0]"]
    cli("predict", *sampling)
    cli("test", *sampling, "--config", CONFIGS / "digits/grade_with_judge.yaml",
        "--model.init_args.judge.init_args.checkpoint", judge)
    before = json.loads((out / "metrics_table.json").read_text())
    cli("test", "--config", CONFIGS / "digits/grade.yaml", "--model.init_args.samples", out,
        "--model.init_args.judge.init_args.checkpoint", judge, "--trainer.enable_progress_bar", "false")
    after = json.loads((out / "metrics_table.json").read_text())
    assert [r["value"] for r in after["rows"]] == [1.0, 2.0] and after["fd_name"] == "fd_digits"
    for a, b in zip(after["rows"], before["rows"]):
        assert a["guidance"] == b["guidance"] and a["num_samples"] == b["num_samples"] == 20
        assert a["metrics"] == pytest.approx(b["metrics"], rel=1e-5)
    assert after["real"] == pytest.approx(before["real"], rel=1e-5)
    assert (out / "config.yaml").is_file() and (out / "test_config.yaml").is_file()
