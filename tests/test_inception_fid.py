"""The positive path of real Inception FID (the ``full`` preset's metric) without downloading anything.

The test writes an Inception-v3 weights file itself: torch-fidelity's FID extractor, randomly initialised (seeded),
saved to disk. ``InceptionFID`` loaded from that file must give exactly what torchmetrics' own
``FrechetInceptionDistance`` gives with the same file, on the same images converted to uint8 RGB by hand.
"""

from __future__ import annotations

import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from lightning_guidance.metrics.frechet import inception_fid


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    folder = tmp_path_factory.mktemp("inception")
    empty = folder / "empty.pth"
    torch.save({}, empty)
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:  # build the network without loading (or downloading) weights
        mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state, *a, **k: None)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    path = folder / "inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


def to_uint8_rgb(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] grayscale -> uint8 RGB, written out here independently of the suite's helper."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).repeat(1, 3, 1, 1)


def test_inception_fid_from_a_local_file_equals_torchmetrics(random_inception_weights):
    gen = torch.Generator().manual_seed(1)
    real = torch.rand(6, 1, 8, 8, generator=gen) * 2 - 1
    fake = (torch.rand(6, 1, 8, 8, generator=gen) * 2 - 1).clamp(-1, 0.2)

    ours = inception_fid(random_inception_weights)
    ours.update(real, real=True)
    ours.update(fake, real=False)
    value = float(ours.compute())

    reference = FrechetInceptionDistance(feature=2048, normalize=False,
                                         feature_extractor_weights_path=str(random_inception_weights))
    reference.update(to_uint8_rgb(real), real=True)
    reference.update(to_uint8_rgb(fake), real=False)
    expected = float(reference.compute())

    assert value > 0
    assert value == pytest.approx(expected, rel=1e-6, abs=1e-6)

    # the same images on both sides: distance 0 (the extractor is deterministic in eval mode)
    same = inception_fid(random_inception_weights)
    same.update(real, real=True)
    same.update(real, real=False)
    assert float(same.compute()) == pytest.approx(0.0, abs=1e-3)
