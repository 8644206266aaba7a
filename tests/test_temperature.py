"""Temperature-scaled guides: one trained classifier, many calibration levels (``TrainedClassifier(temperature=T)``).

Oracle for the calibration levels: labels drawn from the classifier's own probabilities are perfectly calibrated at
T = 1, so its ECE is smallest there and grows as T moves away on either side."""

from __future__ import annotations

import pytest
import torch

from lightning_guidance.calibration import expected_calibration_error
from lightning_guidance.guidance.sweep import describe_classifier
from lightning_guidance.nets import MLPClassifier, TrainedClassifier

TEMPERATURES = (0.25, 0.4, 0.6, 0.8, 1.0, 1.25, 1.6, 2.0, 3.0, 5.0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    net = MLPClassifier(2, 3, hidden_dim=8, num_layers=1)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=1.5)
    spec = {"class_path": "lightning_guidance.nets.MLPClassifier",
            "init_args": {"data_shape": 2, "num_classes": 3, "hidden_dim": 8, "num_layers": 1}}
    path = tmp_path_factory.mktemp("clf") / "c.ckpt"
    torch.save({"hyper_parameters": {"net": spec, "noisy": False},
                "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    return str(path)


def test_temperature_divides_the_logits(checkpoint):
    x = torch.randn(16, 2)
    plain = TrainedClassifier(checkpoint)(x)
    torch.testing.assert_close(TrainedClassifier(checkpoint, temperature=2.5)(x), plain / 2.5)
    assert torch.equal(TrainedClassifier(checkpoint, temperature=1.0)(x), plain)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            TrainedClassifier(checkpoint, temperature=bad)


def test_ten_temperatures_give_ten_calibration_levels_lowest_at_one(checkpoint):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20000, 2, generator=g)
    with torch.no_grad():
        probs = TrainedClassifier(checkpoint)(x).softmax(1)
    labels = torch.multinomial(probs, 1, generator=g)[:, 0]  # calibrated at T = 1 by construction
    eces = []
    for temperature in TEMPERATURES:
        with torch.no_grad():
            p = TrainedClassifier(checkpoint, temperature=temperature)(x).softmax(1)
        confidence, predicted = p.max(1)
        eces.append(float(expected_calibration_error(confidence, predicted == labels)))
    assert len({round(e, 3) for e in eces}) == len(TEMPERATURES), eces
    one = TEMPERATURES.index(1.0)
    assert eces[one] == min(eces) and eces[one] < 0.02
    assert eces[:one + 1] == sorted(eces[:one + 1], reverse=True) and eces[one:] == sorted(eces[one:]), eces


def test_temperature_is_part_of_the_guides_identity_only_when_not_one(checkpoint):
    """The shard hash reads describe_classifier: a tempered guide is another guide; T = 1 keeps the hash every
    untempered guide had before the option existed (no settings)."""
    plain = describe_classifier(TrainedClassifier(checkpoint))
    assert plain["settings"] == "" and describe_classifier(TrainedClassifier(checkpoint, temperature=1.0)) == plain
    warm, hot = (describe_classifier(TrainedClassifier(checkpoint, temperature=t)) for t in (2.0, 3.0))
    assert warm["settings"] == "temperature=2.0" and len({str(plain), str(warm), str(hot)}) == 3
    assert warm["sha256"] == plain["sha256"]  # the same weights file
