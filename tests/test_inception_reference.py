"""Inception FID against a file of reference statistics (``mu``, ``sigma`` of the real set's Inception features,
as the ImageNet evaluation suites publish them) instead of real images.

Oracle: torchmetrics' ``FrechetInceptionDistance`` fed the real images themselves, with the same (random, local)
Inception weights; the reference file is written here from that network's features with numpy's mean and
covariance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_inception_fid import random_inception_weights  # noqa: F401 - the fixture
from torchmetrics.image.fid import FrechetInceptionDistance

from lightning_guidance.io.reference_statistics import read_reference_statistics
from lightning_guidance.metrics.frechet import inception_fid


def uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] RGB -> uint8, written out here independently of the suite's helper."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def images(seed: int, n: int = 6, top: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 8, 8, generator=gen) * 2 - 1).clamp(-1, top)


def test_fid_against_reference_statistics_equals_fid_against_the_real_images(random_inception_weights, tmp_path):
    real, fake = images(1), images(2, top=0.3)
    reference = FrechetInceptionDistance(feature=2048, normalize=False,
                                         feature_extractor_weights_path=str(random_inception_weights))
    reference.update(uint8(real), real=True)
    reference.update(uint8(fake), real=False)
    expected = float(reference.compute())

    with torch.no_grad():
        features = reference.inception(uint8(real)).double().numpy()
    path = tmp_path / "reference.npz"
    np.savez(path, mu=features.mean(0), sigma=np.cov(features, rowvar=False))

    ours = inception_fid(random_inception_weights, reference=path)
    ours.update(fake, real=False)
    assert float(ours.compute()) == pytest.approx(expected, rel=1e-6, abs=0)  # random weights: FID ~ 1e-13
    assert expected > 0
    with pytest.raises(ValueError, match=r"fid_inception reads the real statistics from .*reference.npz"):
        ours.update(real, real=True)


def test_a_bad_reference_file_is_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^reference statistics not found: .*missing.npz \(an .npz with"):
        read_reference_statistics(tmp_path / "missing.npz")
    np.savez(tmp_path / "small.npz", mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(ValueError, match=r"holds mu \(64,\) and sigma \(64, 64\); Inception pool features need "):
        read_reference_statistics(tmp_path / "small.npz")
    np.savez(tmp_path / "foreign.npz", arr_0=np.zeros(3))
    with pytest.raises(ValueError, match=r"foreign.npz is not a reference statistics file \(an .npz with arrays mu"):
        read_reference_statistics(tmp_path / "foreign.npz")
