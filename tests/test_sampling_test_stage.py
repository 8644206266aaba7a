"""SamplingModule ``test``: shards graded against real data by a judge, through the real CLI.

Oracles: the judge's penultimate features computed here from its MLP's own layers (not through the Judge wrapper),
the Fréchet distance with scipy's ``sqrtm`` on numpy covariances, precision/recall by brute-force distances, accuracy
and classifier score from the logits with numpy. Bad input: each mistake gives one clear error.

The builders below (judge, tiny CFG model, shards, tiny noisy classifier) are shared with the other evaluation test
files through a cache in pytest's session temp folder: what one file trained, the next reuses.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from helpers import CONFIGS, cli, load, tiny_digits_fit

from lightning_guidance.data.digits import DigitsDataModule
from lightning_guidance.io.shards import Shard, read_shard, write_shard

SAMPLES_PER_CLASS = 7  # 70 sample ids per scale: rank blocks [0, 35) and [35, 70) cut through a 16-sample shard
SCALES = "[1.0, 3.0]"


# ---- builders shared by the evaluation tests -----------------------------------------------------------
def shared_run(tmp_path_factory, name: str, build) -> Path:
    """``build(root)`` once per test session; later calls (from any test file) reuse its folder."""
    root = tmp_path_factory.getbasetemp() / f"shared-{name}"
    if not (root / ".done").exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        build(root)
        (root / ".done").touch()
    return root


def train_judge(root: Path) -> None:
    """configs/digits/judge.yaml for 200 steps (an MLP on clean pixels, ~97 % validation accuracy)."""
    cli("fit", "--config", CONFIGS / "digits/judge.yaml", "--trainer.default_root_dir", root,
        "--trainer.max_steps", "200", "--trainer.enable_progress_bar", "false")


def train_tiny_cfg(root: Path) -> None:
    tiny_digits_fit(root, 24, "--data.init_args.batch_size", "128")


def train_tiny_noisy_classifier(root: Path) -> None:
    """configs/digits/classifier.yaml (noisy, 4 time buckets) with 8 channels for 150 steps."""
    cli("fit", "--config", CONFIGS / "digits/classifier.yaml", "--trainer.default_root_dir", root,
        "--trainer.max_steps", "150", "--trainer.enable_progress_bar", "false",
        "--model.init_args.net.init_args.model_channels", "8", "--model.init_args.net.init_args.channel_mult", "[1]",
        "--data.init_args.batch_size", "64")


def judge_checkpoint(tmp_path_factory) -> Path:
    return shared_run(tmp_path_factory, "judge", train_judge) / "checkpoints" / "last.ckpt"


def cfg_checkpoint(tmp_path_factory) -> Path:
    return shared_run(tmp_path_factory, "cfg", train_tiny_cfg) / "checkpoints" / "last.ckpt"


def noisy_classifier_checkpoint(tmp_path_factory) -> Path:
    return shared_run(tmp_path_factory, "noisy-classifier", train_tiny_noisy_classifier) / "checkpoints" / "last.ckpt"


def sampling_args(ckpt: Path, out: Path, *extra) -> list:
    return ["--trainer.default_root_dir", out, "--trainer.enable_progress_bar", "false",
            "--model.init_args.checkpoint", ckpt, "--model.init_args.output_dir", out,
            "--model.init_args.samples_per_class", str(SAMPLES_PER_CLASS), "--model.init_args.shard_size", "16",
            "--model.init_args.batch_size", "32", "--model.init_args.sampler_kwargs", "{num_steps: 4}",
            "--model.init_args.sweep.values", SCALES, *extra]


def predict_shards(ckpt: Path, out: Path, *extra) -> None:
    cli("predict", "--config", CONFIGS / "digits/sampling.yaml", *sampling_args(ckpt, out, *extra))


def shards_dir(tmp_path_factory) -> tuple[Path, Path]:
    """(the tiny CFG checkpoint, a folder with its shards at SCALES)."""
    ckpt = cfg_checkpoint(tmp_path_factory)
    return ckpt, shared_run(tmp_path_factory, "shards", lambda root: predict_shards(ckpt, root))


def stage_args(ckpt: Path, out: Path, judge: Path, *extra) -> list:
    return ["test", "--config", CONFIGS / "digits/sampling.yaml", "--config", CONFIGS / "digits/grade_with_judge.yaml",
            *sampling_args(ckpt, out, "--model.init_args.judge.init_args.checkpoint", judge, *extra)]


# ---- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup_paths(tmp_path_factory):
    judge = judge_checkpoint(tmp_path_factory)
    ckpt, shards = shards_dir(tmp_path_factory)
    return judge, ckpt, shards


@pytest.fixture
def shards_copy(setup_paths, tmp_path):
    """A private copy of the shards (tests that damage them)."""
    _, _, shards = setup_paths
    out = tmp_path / "samples"
    shutil.copytree(shards, out)
    return out


# ---- the oracle -------------------------------------------------------------------------------------------
def judge_logits_and_features(judge_ckpt: Path, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The judge MLP rebuilt from its checkpoint; features = its body's output (the input of its head)."""
    from lightning_guidance.nets import MLPClassifier

    ckpt = load(judge_ckpt)
    net = MLPClassifier(**ckpt["hyper_parameters"]["net"]["init_args"])
    net.load_state_dict({k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()})
    net.eval()
    with torch.no_grad():
        features = net.body(x.flatten(1), torch.zeros(len(x)))  # t = 0: clean
        logits = net.head(features)
    return logits.double().numpy(), features.double().numpy()


def frechet_scipy(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root.real))


def coverage(queries: np.ndarray, support: np.ndarray, k: int) -> float:
    """Fraction of ``queries`` inside the union of balls around ``support`` reaching each one's k-th neighbour."""
    d_support = np.linalg.norm(support[:, None] - support[None], axis=-1)
    radii = np.sort(d_support, axis=1)[:, k]  # column 0 is the point itself
    d = np.linalg.norm(queries[:, None] - support[None], axis=-1)
    return float((d <= radii[None]).any(axis=1).mean())


def classifier_score(logits: np.ndarray) -> float:
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    marginal = p.mean(0)
    return float(np.exp(np.mean(np.sum(p * (np.log(p) - np.log(marginal)), axis=1))))


def real_digits() -> tuple[torch.Tensor, torch.Tensor]:
    dm = DigitsDataModule(val_fraction=0.2, seed=0)
    dm.setup()
    x, y = dm.val_set.tensors
    return x, y


# ---- tests ------------------------------------------------------------------------------------------------
def test_metrics_table_matches_an_independent_computation(setup_paths, shards_copy):
    judge, ckpt, _ = setup_paths
    cli(*stage_args(ckpt, shards_copy, judge))
    table = json.loads((shards_copy / "metrics_table.json").read_text())
    markdown = (shards_copy / "metrics_table.md").read_text()
    assert "fd_digits" in markdown and "not Inception FID" in markdown and "| real data |" in markdown

    x_real, y_real = real_digits()
    real_logits, real_features = judge_logits_and_features(judge, x_real)
    assert table["real"]["judge_accuracy"] == pytest.approx((real_logits.argmax(1) == y_real.numpy()).mean())
    assert table["judge_num_features"] == real_features.shape[1]
    assert [row["value"] for row in table["rows"]] == [1.0, 3.0]
    assert table["num_real_samples"] == len(y_real) and all(r["num_samples"] == 70 for r in table["rows"])
    for row in table["rows"]:
        shards = [read_shard(p) for p in sorted((shards_copy / f"cfg_{row['value']:g}").glob("shard_*.npz"))]
        x = torch.cat([s.samples for s in shards])
        y = torch.cat([s.labels for s in shards]).numpy()
        assert len(x) == 10 * SAMPLES_PER_CLASS
        logits, features = judge_logits_and_features(judge, x)
        m = row["metrics"]
        assert m["fd_digits"] == pytest.approx(frechet_scipy(real_features, features), rel=1e-4)
        assert m["precision"] == pytest.approx(coverage(features, real_features, 3), abs=1e-12)
        assert m["recall"] == pytest.approx(coverage(real_features, features, 3), abs=1e-12)
        assert m["judge_accuracy"] == pytest.approx((logits.argmax(1) == y).mean(), abs=1e-6)
        assert m["judge_score"] == pytest.approx(classifier_score(logits), rel=1e-6)
        assert f"| {row['value']:g} | ddim" in markdown


def test_the_judge_rates_real_data_far_above_noise(setup_paths, shards_copy):
    """Sanity of the yardstick: shards holding held-out real digits score a small FD and high judge accuracy,
    shards of pure noise a large FD; both through the same test stage."""
    judge, ckpt, _ = setup_paths
    x_real, y_real = real_digits()
    g = torch.Generator().manual_seed(0)
    for path in sorted((shards_copy / "cfg_1").glob("shard_*.npz")):
        shard = read_shard(path)
        rows = shard.sample_ids
        write_shard(path, Shard(x_real[rows], y_real[rows], shard.seeds, shard.sample_ids, shard.value,
                                shard.config_hash))
    for path in sorted((shards_copy / "cfg_3").glob("shard_*.npz")):
        shard = read_shard(path)
        noise = torch.rand(shard.samples.shape, generator=g) * 2 - 1
        write_shard(path, Shard(noise, shard.labels, shard.seeds, shard.sample_ids, shard.value, shard.config_hash))
    cli(*stage_args(ckpt, shards_copy, judge))
    rows = {r["value"]: r["metrics"] for r in json.loads((shards_copy / "metrics_table.json").read_text())["rows"]}
    assert rows[1.0]["judge_accuracy"] > 0.9 and rows[3.0]["judge_accuracy"] < 0.5
    assert rows[1.0]["fd_digits"] * 5 < rows[3.0]["fd_digits"]


def test_missing_judge_data_or_shards_are_clear_errors(setup_paths, tmp_path, tmp_path_factory):
    judge, ckpt, _ = setup_paths
    with pytest.raises(FileNotFoundError, match=r"no sample shards in .*cfg_1.*predict"):
        cli(*stage_args(ckpt, tmp_path / "empty", judge))
    with pytest.raises(ValueError, match="needs? .*judge|grades samples with a judge"):
        cli(*stage_args(ckpt, tmp_path / "empty", judge, "--model.init_args.judge", "null"))
    with pytest.raises(ValueError, match="real data: give the dataset"):
        cli(*stage_args(ckpt, tmp_path / "empty", judge, "--data", "null"))
    noisy = noisy_classifier_checkpoint(tmp_path_factory)
    with pytest.raises(ValueError, match="noisy .*classifier; a judge is trained on clean data"):
        cli(*stage_args(ckpt, tmp_path / "empty", noisy))
    with pytest.raises(FileNotFoundError, match=r"judge checkpoint not found: .*nojudge\.ckpt .*judge\.yaml"):
        cli(*stage_args(ckpt, tmp_path / "empty", tmp_path / "nojudge.ckpt"))
    with pytest.raises(FileNotFoundError, match=r"Inception weights not found: .*nope\.pth"):
        cli(*stage_args(ckpt, tmp_path / "empty", judge, "--model.init_args.inception_weights",
                       tmp_path / "nope.pth"))


def test_a_judge_that_also_guides_is_refused(setup_paths, tmp_path):
    judge, ckpt, _ = setup_paths
    (tmp_path / "guided.yaml").write_text(f"""
model:
  init_args:
    sweep:
      terms:
        - class_path: lightning_guidance.guidance.OffTheShelfGuidance
          init_args:
            classifier: {{class_path: lightning_guidance.nets.TrainedClassifier,
                          init_args: {{checkpoint: {judge}}}}}
""")  # a clean classifier guiding through x0_hat, as an off-the-shelf guide does
    args = stage_args(ckpt, tmp_path / "o", judge)
    with pytest.raises(ValueError, match="graded by its own teacher"):
        cli(*args[:3], "--config", tmp_path / "guided.yaml", *args[3:])


def test_too_few_samples_is_an_error_not_nan(setup_paths, tmp_path):
    judge, ckpt, _ = setup_paths
    with pytest.raises(ValueError, match=r"3 samples per swept value are too few.*k=3.*at least 4"):
        cli(*stage_args(ckpt, tmp_path / "o", judge, "--model.init_args.classes", "[0]",
                       "--model.init_args.samples_per_class", "3"))


def test_stale_or_incomplete_shards_are_clear_errors(setup_paths, shards_copy):
    judge, ckpt, _ = setup_paths
    with pytest.raises(ValueError, match="sampled with another config"):
        cli(*stage_args(ckpt, shards_copy, judge, "--model.init_args.sampler_kwargs", "{num_steps: 5}"))
    sorted((shards_copy / "cfg_3").glob("shard_*.npz"))[1].unlink()
    with pytest.raises(ValueError, match=r"hold 54 distinct of the 70 sample ids.*predict was interrupted"):
        cli(*stage_args(ckpt, shards_copy, judge))


def test_shards_of_another_resolution_are_a_clear_error(setup_paths, shards_copy):
    """Shards holding 16x16 images (another dataset / resolution) against the 8x8 digits."""
    judge, ckpt, _ = setup_paths
    for path in sorted(shards_copy.glob("cfg_*/shard_*.npz")):
        shard = read_shard(path)
        big = torch.nn.functional.interpolate(shard.samples, scale_factor=2, mode="nearest")
        write_shard(path, Shard(big, shard.labels, shard.seeds, shard.sample_ids, shard.value, shard.config_hash))
    with pytest.raises(ValueError, match=r"shape \(1, 16, 16\) but the real data \(DigitsDataModule\) has shape "
                                         r"\(1, 8, 8\)"):
        cli(*stage_args(ckpt, shards_copy, judge))


def test_predict_is_unchanged_by_the_test_arguments(setup_paths, tmp_path):
    """The judge and metric arguments are not part of the sampling config: the same shards come out.
    Catches a predict that writes nothing or fewer shards (the shard lists must be equal, not just zipped) and judge
    arguments leaking into the config hash. (The uint8 file boundary itself is tested in test_io.py.)"""
    judge, ckpt, shards = setup_paths
    cli("predict", "--config", CONFIGS / "digits/sampling.yaml", "--config", CONFIGS / "digits/grade_with_judge.yaml",
        "--data", "null",  # predict brings its own loader
        *sampling_args(ckpt, tmp_path / "again", "--model.init_args.judge.init_args.checkpoint", judge))
    first = sorted(p.relative_to(shards) for p in shards.glob("cfg_*/shard_*.npz"))
    again = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").glob("cfg_*/shard_*.npz"))
    assert first == again and len(first) == 2 * 5  # 2 scales x ceil(70 / 16) shards
    for rel in first:
        with np.load(shards / rel) as za, np.load(tmp_path / "again" / rel) as zb:
            assert str(za["config_hash"]) == str(zb["config_hash"])
            np.testing.assert_array_equal(za["images"], zb["images"])
            np.testing.assert_array_equal(za["sample_ids"], zb["sample_ids"])
