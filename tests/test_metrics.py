"""Evaluation metrics against independent references: scipy's sqrtm, sklearn's nearest neighbours, hand formulas,
torchmetrics' own metrics, and the behaviour Fréchet distance must have on real data (sklearn digits)."""

import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import pairwise_distances
from sklearn.neighbors import NearestNeighbors
from torch import nn
from torchmetrics.classification import MulticlassCalibrationError
from torchmetrics.image.inception import InceptionScore

from lightning_guidance.metrics import (
    ClassifierScore,
    ECEOverTime,
    FrechetDistance,
    GenerativePrecisionRecall,
    SmoothECE,
    conditional_accuracy,
    frechet_distance,
    images_to_uint8_rgb,
    inception_fid,
    knn_radii,
)


def reference_frechet(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b)) with scipy's matrix square root."""
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    s_a, s_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    root = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root))


class RandomConvFeatures(nn.Module):
    """A fixed, randomly initialised conv net: a feature space that knows nothing of digits."""

    num_features = 32

    def __init__(self, seed: int = 0):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        g = torch.Generator().manual_seed(seed)
        for p in self.net.parameters():
            p.data = 0.3 * torch.randn(p.shape, generator=g)

    def forward(self, x):
        return self.net(x)


class FlattenProjection(nn.Module):
    """Flatten and multiply by a fixed matrix: features are an exact linear function of the pixels."""

    def __init__(self, in_dim: int, num_features: int, seed: int = 0):
        super().__init__()
        self.num_features = num_features
        self.register_buffer("weight", torch.randn(in_dim, num_features, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x):
        return x.flatten(1) @ self.weight


@pytest.fixture(scope="module")
def digits():
    images = torch.from_numpy(load_digits().images).float().div(8).sub(1).unsqueeze(1)  # [0, 16] -> [-1, 1]
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return images[perm[:898]], images[perm[898:]]


# ---------------------------------------------------------------- Fréchet distance

def test_frechet_distance_function_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8)) + 0.5
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    value = frechet_distance(*(torch.from_numpy(v) for v in (mu_a, s_a, mu_b, s_b)))
    assert float(value) == pytest.approx(reference_frechet(a, b), rel=1e-8)
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(torch.zeros(3), torch.eye(2), torch.zeros(3), torch.eye(3))


def test_frechet_metric_matches_scipy_on_batched_updates():
    g = torch.Generator().manual_seed(1)
    extractor = FlattenProjection(3 * 4 * 4, 6)
    real = torch.rand(200, 3, 4, 4, generator=g) * 2 - 1
    fake = (torch.rand(150, 3, 4, 4, generator=g) * 2 - 1) * 0.7 + 0.1
    metric = FrechetDistance(extractor, name="fd_test")
    for chunk in real.split(64):
        metric.update(chunk, real=True)
    for chunk in fake.split(40):
        metric.update(chunk, real=False)
    expected = reference_frechet(extractor(real).double().numpy(), extractor(fake).double().numpy())
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-4)
    assert metric.name == "fd_test"


def test_frechet_distance_on_digits_grows_with_noise(digits):
    split_a, split_b = digits
    extractor = RandomConvFeatures()
    g = torch.Generator().manual_seed(1)

    def fd(fake):
        metric = FrechetDistance(extractor, name="fd_digits")
        metric.update(split_a, real=True)
        metric.update(fake, real=False)
        return float(metric.compute())

    same = fd(split_b)
    noised = [fd((split_b + s * torch.randn(split_b.shape, generator=g)).clamp(-1, 1)) for s in (0.2, 0.4, 0.8)]
    assert 5 * same < noised[0] < noised[1] < noised[2]


def test_frechet_distance_errors():
    class NoSize(nn.Module):
        def forward(self, x):
            return x.flatten(1)

    with pytest.raises(ValueError, match="num_features"):
        FrechetDistance(NoSize(), name="fd_x")
    with pytest.raises(ValueError, match="fd_digits"):
        FrechetDistance(FlattenProjection(16, 4), name="fid_digits")
    metric = FrechetDistance(FlattenProjection(16, 4), name="fd_x")
    metric.update(torch.randn(1, 1, 4, 4), real=True)
    metric.update(torch.randn(10, 1, 4, 4), real=False)
    with pytest.raises(RuntimeError, match="at least 2 real and 2 generated.*got 1 real and 10 generated"):
        metric.compute()
    lying = FlattenProjection(16, 4)
    lying.num_features = 5  # says 5, returns 4
    with pytest.raises(ValueError, match="num_features says"):
        FrechetDistance(lying, name="fd_x").update(torch.randn(3, 1, 4, 4), real=True)
    with pytest.raises(ValueError, match="float images"):
        metric.update(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), real=True)


def test_frechet_extractor_stays_in_eval_mode():
    extractor = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(16, 4))
    extractor.num_features = 4
    metric = FrechetDistance(extractor, name="fd_x")
    metric.train()
    assert not extractor.training
    x = torch.randn(8, 1, 4, 4)
    metric.update(x, real=True)
    metric.update(x, real=False)
    assert float(metric.compute()) == pytest.approx(0.0, abs=1e-4)  # dropout off: same images, same features


def test_inception_fid_needs_local_weights(tmp_path):
    missing = tmp_path / "nowhere" / "inception.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        inception_fid(missing)
    present = tmp_path / "inception.pth"
    present.write_bytes(b"")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(ModuleNotFoundError, match="(?i)torch-fidelity"):
            inception_fid(present)
        return
    # torch-fidelity installed: an existing file passes our check and reaches its loader, which fails on the empty
    # file with its own error (EOFError). Catches a check that refuses existing files or never hands the path on.
    with pytest.raises(Exception) as err:
        inception_fid(present)
    assert not isinstance(err.value, FileNotFoundError) and not isinstance(err.value, ModuleNotFoundError)


def test_images_to_uint8_rgb():
    imgs = torch.tensor([-1.0, 0.0, 1.0, 1.7]).view(1, 1, 2, 2)
    out = images_to_uint8_rgb(imgs)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 2, 2)
    assert out[0, 2].flatten().tolist() == [0, 128, 255, 255]  # round(127.5) = 128 (half to even)


# ---------------------------------------------------------------- precision / recall

def reference_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019 with sklearn: radius = distance to the k-th neighbour other than the point itself."""
    real_radii = NearestNeighbors(n_neighbors=k + 1).fit(real).kneighbors(real)[0][:, k]
    fake_radii = NearestNeighbors(n_neighbors=k + 1).fit(fake).kneighbors(fake)[0][:, k]
    precision = (pairwise_distances(fake, real) <= real_radii[None, :]).any(axis=1).mean()
    recall = (pairwise_distances(real, fake) <= fake_radii[None, :]).any(axis=1).mean()
    return float(precision), float(recall)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("k", [3, 5])
def test_precision_recall_matches_sklearn(backend, k):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(300, 5))
    fake = rng.normal(size=(250, 5)) * 0.6 + np.array([2.5, 0, 0, 0, 0])  # narrower and shifted: both < 1
    expected_precision, expected_recall = reference_precision_recall(real, fake, k)
    assert 0.02 < expected_precision < 0.99 and 0.02 < expected_recall < 0.99
    metric = GenerativePrecisionRecall(k=k, knn_backend=backend)
    for chunk in np.array_split(real, 3):
        metric.update(torch.from_numpy(chunk), real=True)
    for chunk in np.array_split(fake, 4):
        metric.update(torch.from_numpy(chunk), real=False)
    result = metric.compute()
    assert float(result["precision"]) == pytest.approx(expected_precision, abs=1e-12)
    assert float(result["recall"]) == pytest.approx(expected_recall, abs=1e-12)
    expected_radii = NearestNeighbors(n_neighbors=k + 1).fit(real).kneighbors(real)[0][:, k]
    np.testing.assert_allclose(knn_radii(torch.from_numpy(real), k, backend).numpy(), expected_radii, rtol=1e-5)


def test_precision_recall_identical_sets_and_errors():
    x = torch.randn(50, 4)
    metric = GenerativePrecisionRecall()
    metric.update(x, real=True)
    metric.update(x, real=False)
    result = metric.compute()
    assert float(result["precision"]) == 1.0 and float(result["recall"]) == 1.0
    few = GenerativePrecisionRecall(k=3)
    few.update(torch.randn(3, 4), real=True)
    few.update(torch.randn(10, 4), real=False)
    with pytest.raises(RuntimeError, match="more than 3"):
        few.compute()


# ---------------------------------------------------------------- judge-based scores

@pytest.mark.filterwarnings("ignore:std\\(\\):UserWarning")  # torchmetrics' std over a single split
def test_classifier_score_matches_hand_formula_and_inception_score():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 6, generator=g) * 2 + torch.linspace(0, 1, 6)
    metric = ClassifierScore(num_classes=6)
    for chunk in logits.split(70):
        metric.update(chunk)
    p = torch.softmax(logits.double(), dim=1).numpy()
    marginal = p.mean(0)
    expected = np.exp(np.mean((p * (np.log(p) - np.log(marginal))).sum(1)))
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-10)
    with pytest.warns(UserWarning):
        upstream = InceptionScore(feature=nn.Identity(), splits=1)
    upstream.update(logits.double())
    assert float(metric.compute()) == pytest.approx(float(upstream.compute()[0]), rel=1e-8)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_classifier_score_limits():
    uniform = ClassifierScore(num_classes=4)
    uniform.update(torch.zeros(10, 4))
    assert float(uniform.compute()) == pytest.approx(1.0)
    sure_and_balanced = ClassifierScore(num_classes=4)
    sure_and_balanced.update(50.0 * nn.functional.one_hot(torch.arange(8) % 4, 4).float())
    assert float(sure_and_balanced.compute()) == pytest.approx(4.0, rel=1e-6)
    with pytest.raises(RuntimeError, match="no samples"):
        ClassifierScore(num_classes=4).compute()


def test_conditional_accuracy_is_per_sample():
    logits = torch.eye(3)[[0, 0, 0, 0, 1, 2]]
    labels = torch.tensor([0, 0, 0, 0, 2, 2])  # 5 of 6 right; per-class mean would be (1 + 0.5 + ...)
    metric = conditional_accuracy(num_classes=3)
    assert float(metric(logits, labels)) == pytest.approx(5 / 6)


# ---------------------------------------------------------------- calibration metrics

def test_smooth_ece_metric_matches_relplot():
    import relplot

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(400, 5, generator=g) / 0.3, dim=1)
    labels = torch.randint(5, (400,), generator=g)
    metric = SmoothECE()
    for p, y in zip(probs.split(128), labels.split(128)):
        metric.update(p, y)
    confidence, prediction = probs.max(1)
    expected = relplot.smECE(confidence.double().numpy(), (prediction == labels).double().numpy())
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-6)


def test_ece_over_time_buckets_match_torchmetrics_per_bucket():
    g = torch.Generator().manual_seed(0)
    num_buckets, n = 4, 800
    t = torch.rand(n, generator=g)
    t[:5] = 1.0  # t = 1 belongs to the last bucket
    # noisier (earlier) times: flatter logits, so the buckets differ in calibration
    logits = torch.randn(n, 10, generator=g) * (4 * (1 - t)).unsqueeze(1)
    probs, labels = torch.softmax(logits, dim=1), torch.randint(10, (n,), generator=g)
    metric = ECEOverTime(num_buckets=num_buckets, n_bins=10)
    for p, y, tt in zip(probs.split(100), labels.split(100), t.split(100)):
        metric.update(p, y, tt)
    result = metric.compute()
    bucket = torch.clamp((t * num_buckets).long(), max=num_buckets - 1)
    torchmetrics_ece = MulticlassCalibrationError(num_classes=10, n_bins=10)
    expected = torch.stack([torchmetrics_ece(probs[bucket == k], labels[bucket == k])
                            for k in range(num_buckets)]).double()
    torch.testing.assert_close(result["ece_per_bucket"], expected, atol=1e-6, rtol=0)
    assert float(result["integral_ece"]) == pytest.approx(float(expected.mean()), abs=1e-6)
    assert len(set(np.round(expected.numpy(), 3))) == num_buckets  # the buckets really are different


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_ece_over_time_scalar_t_empty_buckets_and_errors():
    probs = torch.softmax(torch.randn(50, 3), dim=1)
    labels = torch.randint(3, (50,))
    metric = ECEOverTime(num_buckets=5)
    metric.update(probs, labels, 0.1)
    metric.update(probs, labels, 0.95)
    with pytest.warns(UserWarning, match="saw no samples"):
        result = metric.compute()
    per_bucket = result["ece_per_bucket"]
    assert per_bucket[[1, 2, 3]].isnan().all()
    expected = float(MulticlassCalibrationError(num_classes=3, n_bins=10)(probs, labels))
    assert float(per_bucket[0]) == pytest.approx(expected, abs=1e-6)
    assert float(result["integral_ece"]) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metric.update(probs, labels, 10)
    with pytest.raises(RuntimeError, match="no samples"):
        ECEOverTime().compute()
