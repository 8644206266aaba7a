"""The kernel distance, the per-sample products the test stage writes, and every figure recomputed from them.

Oracles: torchmetrics' ``KernelInceptionDistance`` used as its documentation shows (a custom feature module, the
global seed) and the unbiased MMD^2 written out with numpy; the judge's features and logits computed from its MLP's
own layers (test_sampling_test_stage's oracle) and the shard files; the test stage's metrics_table.json for the
recomputation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics.image.kid import KernelInceptionDistance

from lightning_guidance.io.sample_products import products_path, read_sample_products, write_sample_products
from lightning_guidance.io.shards import read_shard
from lightning_guidance.metrics import SampleProducts, kernel_distance, quality_from_products, real_floor
from test_sampling_test_stage import (SAMPLES_PER_CLASS, cli, judge_logits_and_features, real_digits,
                                      setup_paths, shards_copy, stage_args)  # noqa: F401 - fixtures


class Identity(nn.Module):
    def forward(self, x):
        return x


def features(n: int, d: int = 8, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def mmd2_unbiased(a: np.ndarray, b: np.ndarray) -> float:
    """Bińkowski et al. 2018, eq. 4 with k(x, y) = (x.y / d + 1)^3, for two sets of one size m."""
    kernel = lambda x, y: (x @ y.T / a.shape[1] + 1) ** 3  # noqa: E731
    m = len(a)
    kaa, kbb, kab = kernel(a, a), kernel(b, b), kernel(a, b)
    return float((kaa.sum() - np.trace(kaa) + kbb.sum() - np.trace(kbb)) / (m * (m - 1)) - 2 * kab.mean())


@pytest.mark.parametrize("subsets, subset_size", [(1, 60), (20, 25)])
def test_kernel_distance_is_torchmetrics_kid_on_fixed_features(subsets, subset_size):
    real, fake = features(60), features(70, shift=0.3, seed=1)
    ours = kernel_distance(real, fake, subsets=subsets, subset_size=subset_size, seed=5)
    kid = KernelInceptionDistance(feature=Identity(), subsets=subsets, subset_size=subset_size)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    torch.manual_seed(5)
    mean, std = kid.compute()
    assert ours == (pytest.approx(float(mean), rel=1e-12), pytest.approx(float(std), rel=1e-12, abs=1e-15))


def test_kernel_distance_is_the_unbiased_mmd_and_is_unbiased_at_small_n():
    """One subset of all samples (equal sizes) is the U-statistic itself. Two samples of one law: its mean over many
    draws is ~0 at n = 20 (unbiased), where the Fréchet distance of the same draws is far above 0."""
    real, fake = features(40), features(40, shift=0.5, seed=1)
    assert kernel_distance(real, fake, subsets=3, subset_size=40)[0] == pytest.approx(
        mmd2_unbiased(real.numpy(), fake.numpy()), rel=1e-10)
    from lightning_guidance.metrics.products import _moments
    from lightning_guidance.metrics import frechet_distance

    kd, fd = [], []
    for seed in range(150):
        a, b = features(20, seed=2 * seed), features(20, seed=2 * seed + 1)
        kd.append(kernel_distance(a, b, subsets=1, subset_size=20)[0])
        fd.append(float(frechet_distance(*_moments(a), *_moments(b))))
    kd, fd = np.array(kd), np.array(fd)
    assert abs(kd.mean()) < 3 * kd.std() / np.sqrt(len(kd))
    assert fd.mean() > 10 * fd.std() / np.sqrt(len(fd))
    with pytest.raises(ValueError, match="at least 2"):
        kernel_distance(real[:1], fake)


def test_sample_products_sort_by_id_and_refuse_a_repeat():
    products = SampleProducts()
    ids = torch.tensor([5, 1, 3])
    products.update(torch.tensor([0, 1, 2]), torch.eye(3), torch.arange(6.0).view(3, 2), ids)
    products.update(torch.tensor([1]), torch.ones(1, 3), torch.ones(1, 2), torch.tensor([0]))
    out = products.compute()
    assert out["ids"].tolist() == [0, 1, 3, 5] and out["labels"].tolist() == [1, 1, 2, 0]
    assert out["features"][3].tolist() == [0.0, 1.0]
    products.update(torch.tensor([0]), torch.ones(1, 3), torch.ones(1, 2), torch.tensor([3]))
    with pytest.raises(RuntimeError, match="graded twice"):
        products.compute()


def test_product_files_round_trip_and_bad_files_are_one_line(tmp_path):
    path = products_path(tmp_path, "cfg_1")
    logits = np.array([[2.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    write_sample_products(path, {"ids": [0, 1], "labels": [0, 1], "features": np.ones((2, 3)), "logits": logits},
                          {"group": "cfg_1"})
    got = read_sample_products(path)
    assert got["meta"] == {"group": "cfg_1"} and got["features"].dtype == np.float32
    np.testing.assert_allclose(got["probabilities"], torch.softmax(torch.from_numpy(logits), 1).numpy(), rtol=1e-6)
    assert oct(path.stat().st_mode & 0o777) != "0o600"  # a finished file, not a private temp file
    path.write_bytes(b"nonsense")
    with pytest.raises(ValueError, match=r"sample products .*cfg_1\.npz cannot be read"):
        read_sample_products(path)
    with pytest.raises(FileNotFoundError, match="sample products not found"):
        read_sample_products(tmp_path / "none.npz")
    with pytest.raises(ValueError, match="plain folder name"):
        products_path(tmp_path, "../x")


def _products(n: int, shift: float, seed: int) -> dict:
    feats = features(n, shift=shift, seed=seed).numpy().astype(np.float32)
    logits = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
    return {"features": feats, "logits": logits, "labels": np.arange(n) % 4}


def test_a_repeated_sample_adds_no_ball_to_precision_and_recall():
    """A bootstrap draw may repeat ids: drawing every id twice leaves precision/recall (manifolds of the distinct
    samples, shares counted with repeats) and the judge's accuracy and score exactly as they were."""
    gen, real = _products(50, 0.3, 1), _products(60, 0.0, 2)
    once = quality_from_products(gen, real, knn_backend="torch")
    twice = quality_from_products(gen, real, np.repeat(np.arange(50), 2), np.repeat(np.arange(60), 2),
                                  knn_backend="torch")
    for key in ("precision", "recall", "judge_accuracy", "judge_score"):
        assert twice[key] == pytest.approx(once[key], rel=1e-12), key
    assert list(quality_from_products(gen, real, metrics=["recall", "fd_judge"])) == ["fd_judge", "recall"]
    with pytest.raises(ValueError, match="unknown metrics"):
        quality_from_products(gen, real, metrics=["fid"])


def test_real_floor_uses_two_disjoint_halves():
    real = _products(41, 0.0, 3)
    floor = real_floor(real, 100, knn_backend="torch")
    assert floor["num_samples"] == 20
    order = np.random.default_rng(0).permutation(41)
    direct = quality_from_products(real, real, order[:20], order[20:40], knn_backend="torch")
    assert floor["metrics"] == direct
    assert real_floor(real, 10, knn_backend="torch")["num_samples"] == 10


def test_the_test_stage_writes_products_that_reproduce_its_table(setup_paths, shards_copy):  # noqa: F811
    """Through the real CLI: the products hold, per sample id, the shard's label and the judge's own features and
    logits (the oracle's); recomputed from them on all ids, every figure of metrics_table.json comes back, the
    real-vs-real floor too."""
    judge, ckpt, _ = setup_paths
    cli(*stage_args(ckpt, shards_copy, judge))
    table = json.loads((shards_copy / "metrics_table.json").read_text())
    real = read_sample_products(products_path(shards_copy, "real"))
    x_real, y_real = real_digits()
    real_logits, real_features = judge_logits_and_features(judge, x_real)
    assert real["ids"].tolist() == list(range(len(y_real))) and real["labels"].tolist() == y_real.tolist()
    np.testing.assert_allclose(real["features"], real_features, rtol=1e-5, atol=1e-5)
    settings = table["settings"]
    assert settings["fd_name"] == "fd_digits" and settings["kd_subset_size"] == 1000
    for row in table["rows"]:
        group = f"cfg_{row['value']:g}"
        gen = read_sample_products(products_path(shards_copy, group))
        shards = [read_shard(p) for p in sorted((shards_copy / group).glob("shard_*.npz"))]
        assert gen["ids"].tolist() == list(range(10 * SAMPLES_PER_CLASS))
        assert gen["labels"].tolist() == torch.cat([s.labels for s in shards]).tolist()
        logits, feats = judge_logits_and_features(judge, torch.cat([s.samples for s in shards]))
        np.testing.assert_allclose(gen["logits"], logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(gen["features"], feats, rtol=1e-5, atol=1e-5)
        again = quality_from_products(gen, real, **settings)
        assert again.keys() == row["metrics"].keys() and "kd_digits" in again
        for key, value in row["metrics"].items():
            assert again[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    floor = real_floor(real, table["num_samples_per_value"], **settings)
    assert floor["num_samples"] == table["real_floor"]["num_samples"] == 10 * SAMPLES_PER_CLASS
    for key, value in table["real_floor"]["metrics"].items():
        assert floor["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert "| real vs real |" in (shards_copy / "metrics_table.md").read_text()


def _arm(base: np.ndarray, shift: float, noise: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n = len(base)
    return {"ids": np.arange(n), "labels": np.arange(n) % 4, "logits": rng.normal(size=(n, 4)).astype(np.float32),
            "features": (base + shift + noise * rng.normal(size=base.shape)).astype(np.float32)}


def test_paired_interval_of_two_methods_on_the_same_ids():
    """Two methods that share each sample's content (same ids, same seeds) but differ by a small shift: the paired
    interval of the fd difference is much narrower than the unpaired one, and both are centred on the difference
    measured on all samples."""
    from lightning_guidance.metrics.intervals import (hierarchical_metric_interval, metric_interval,
                                                      paired_metric_interval)
    from lightning_guidance.stats import unpaired_bootstrap

    base = np.random.default_rng(0).normal(size=(80, 4)) * 2
    a, b = _arm(base, 0.5, 0.1, 1), _arm(base, 0.0, 0.1, 2)
    real = _products(90, 0.0, 3)
    real["features"] = real["features"][:, :4].copy()
    settings = {"fd_name": "fd_judge", "knn_backend": "torch"}
    paired = paired_metric_interval(a, b, real, "fd_judge", num_resamples=300, **settings)
    def fd(g):
        return lambda gi, ri: quality_from_products(g, real, gi, ri, metrics=["fd_judge"])["fd_judge"]

    direct = fd(a)(np.arange(80), np.arange(90)) - fd(b)(np.arange(80), np.arange(90))
    assert paired.estimate == pytest.approx(direct, rel=1e-12)
    unpaired = unpaired_bootstrap(fd(a), (80, 90), fd(b), (80, 90), num_resamples=300)
    assert (paired.high - paired.low) * 2 < unpaired.high - unpaired.low
    single = metric_interval(a, real, "fd_judge", num_resamples=100, **settings)
    assert single.low <= fd(a)(np.arange(80), np.arange(90)) <= single.high
    two_seeds = hierarchical_metric_interval([(a, b, real), (b, a, real)], "fd_judge", num_resamples=100, **settings)
    assert two_seeds.estimate == pytest.approx(0.0, abs=1e-9)
    b_other = dict(b, ids=np.arange(1, 81))
    with pytest.raises(ValueError, match="same sample ids"):
        paired_metric_interval(a, b_other, real, "fd_judge", num_resamples=10)
