"""``cli.py test`` of configs/digits/guide_calibration.yaml: the integral ECE of a guide on what it reads while sampling
(x_t for a noisy classifier, the denoised x0_hat for an off-the-shelf one), written to guide_calibration.json, and each
image's logits to guide_logits.npz.

Oracle: torchmetrics' ``MulticlassCalibrationError`` (l1, 10 bins) on the same noised held-out images (the evaluation
half of HeldOutSplit, which the Smooth-ECE fine-tune never trains on), read by hand (the diffusion model's x0 at the
bucket's training step given the null class, clamped), averaged over the buckets.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from helpers import CONFIGS, cli, composed, tiny_checkpoints
from torchmetrics.classification import MulticlassCalibrationError

from lightning_guidance.calibration.ece import time_buckets
from lightning_guidance.data.digits import DigitsDataModule
from lightning_guidance.data.heldout_split import HeldOutSplit
from lightning_guidance.diffusion.sampling import build_denoiser
from lightning_guidance.metrics.classifier_calibration import noised_views
from lightning_guidance.modules.cfg_diffusion import CFGDiffusion
from lightning_guidance.nets import TrainedClassifier

N, BUCKETS = 150, 3  # more than one test batch (128), fewer than the evaluation half (180)


@pytest.fixture(scope="module")
def checkpoint_for(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory)


def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    """The first N images of the evaluation half (the fine-tune trains on the other half)."""
    dm = HeldOutSplit(DigitsDataModule(batch_size=128, val_fraction=0.2, seed=0), calibration_fraction=0.5, seed=0,
                      batch_size=128)
    dm.setup("test")
    return tuple(torch.cat(parts)[:N] for parts in zip(*[(b[0], b[1]) for b in dm.test_dataloader()]))


def expected(cfg_ckpt, clf_ckpt, x0_hat: bool, temperature: float = 1.0) -> list[float]:
    x0, y = held_out()
    diffusion = CFGDiffusion.from_checkpoint(cfg_ckpt)
    classifier = TrainedClassifier(str(clf_ckpt), temperature=temperature)
    null = torch.full_like(y, diffusion.num_classes)  # x0_hat never sees the label it is graded on
    schedule = diffusion.schedule
    top = schedule.num_train_steps - 1
    eces = []
    with torch.no_grad():
        for (a, b), (x_t, t) in zip(time_buckets((0, 1), BUCKETS),
                                    noised_views(schedule, x0, torch.arange(N), time_buckets((0, 1), BUCKETS), 0)):
            if x0_hat:
                abar = schedule.abar(torch.full((N,), round((a + b) / 2 * top))).float()
                logits = classifier(build_denoiser(diffusion)(x_t, t, abar, null).x0.clamp(-1, 1), None)
            else:
                logits = classifier(x_t, t)
            metric = MulticlassCalibrationError(num_classes=10, n_bins=10, norm="l1")
            eces.append(float(metric(logits.float().softmax(1), y)))
    return eces


def measure(tmp_path, checkpoint_for, guidance: str, temperature: float = 1.0):
    """Run the guide-calibration test step on the term of ``guidance`` on the digits (its classifier at
    ``temperature``)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    term = composed("digits/sampling.yaml", guidance)["model"]["init_args"]["sweep"]["terms"][0]
    clf = checkpoint_for(term["init_args"]["classifier"]["init_args"]["checkpoint"])
    term["init_args"]["classifier"]["init_args"]["checkpoint"] = str(clf)
    if temperature != 1.0:
        term["init_args"]["classifier"]["init_args"]["temperature"] = temperature
    cfg = checkpoint_for("runs/digits/cfg/checkpoints/last.ckpt")
    edits = tmp_path / "edits.yaml"
    edits.write_text(yaml.safe_dump({"model": {"init_args": {
        "checkpoint": str(cfg), "term": term, "num_buckets": BUCKETS, "num_samples": N, "output_dir": str(tmp_path)}},
        "trainer": {"default_root_dir": str(tmp_path), "enable_progress_bar": False}}))
    cli("test", "--config", CONFIGS / "digits/guide_calibration.yaml", "--config", edits)
    return json.loads((tmp_path / "guide_calibration.json").read_text()), cfg, clf


@pytest.mark.parametrize("guidance, x0_hat", [("guidance/cg.yaml", False), ("guidance/offtheshelf.yaml", True)])
def test_integral_ece_of_a_guide_on_its_input(tmp_path, checkpoint_for, guidance, x0_hat):
    result, cfg, clf = measure(tmp_path, checkpoint_for, guidance)
    eces = expected(cfg, clf, x0_hat)
    assert result["num_samples"] == N and len(result["buckets"]) == BUCKETS
    assert result["ece_per_bucket"] == pytest.approx(eces, abs=1e-6)
    assert result["integral_ece"] == pytest.approx(sum(eces) / BUCKETS, abs=1e-6)
    assert result["term"]["input"] == ("x0_hat" if x0_hat else "x_t")


def test_the_logits_give_the_ece_of_any_subset_and_temperature(tmp_path, checkpoint_for):
    """guide_logits.npz holds each held-out image's logits per bucket: on all images it gives the step's integral ECE;
    divided by T, the integral ECE that the step measures for the same classifier built with temperature T."""
    from lightning_guidance.metrics.calibration_intervals import integral_ece_of_logits, read_guide_logits

    result, cfg, clf = measure(tmp_path / "t1", checkpoint_for, "guidance/cg.yaml")
    products = read_guide_logits(tmp_path / "t1" / "guide_logits.npz")
    x0, y = held_out()
    assert products["logits"].shape == (N, BUCKETS, 10)
    assert (products["labels"] == y.numpy()).all() and (products["ids"] == range(N)).all()
    assert integral_ece_of_logits(products) == pytest.approx(result["integral_ece"], abs=1e-6)
    hot, _, _ = measure(tmp_path / "t3", checkpoint_for, "guidance/cg.yaml", temperature=3.0)
    assert integral_ece_of_logits(products, temperature=3.0) == pytest.approx(hot["integral_ece"], abs=1e-6)
    assert hot["integral_ece"] == pytest.approx(sum(expected(cfg, clf, False, 3.0)) / BUCKETS, abs=1e-6)
    assert abs(hot["integral_ece"] - result["integral_ece"]) > 1e-3  # the temperature changes the figure


def test_x0_hat_is_denoised_without_the_true_label(tmp_path, checkpoint_for, monkeypatch):
    """Bug caught: x0_hat denoised given the label the classifier is then graded on (it carries the answer: the ECE of
    an x0_hat guide came out too good). Every denoiser call of the step must get the null class."""
    from lightning_guidance.diffusion.denoiser import NetDenoiser

    seen, call = [], NetDenoiser.__call__

    def recording(self, x_t, t, abar, y, step=None):
        seen.append(y.clone())
        return call(self, x_t, t, abar, y, step)

    monkeypatch.setattr(NetDenoiser, "__call__", recording)
    measure(tmp_path, checkpoint_for, "guidance/offtheshelf.yaml")
    labels = torch.cat(seen)
    assert len(labels) == N * BUCKETS and (labels == 10).all(), labels.unique()


def test_the_guide_ece_images_are_those_the_fine_tune_never_trains_on():
    """The guide's ECE is read on the evaluation half of the split that configs/digits/calibrate.yaml fine-tunes on
    the other half of: the two configs cut the same held-out split the same way."""
    def split(name):
        data = yaml.safe_load((CONFIGS / name).read_text())["data"]
        return data["class_path"], data["init_args"]["data"], data["init_args"]["calibration_fraction"], \
            data["init_args"]["seed"]

    assert split("digits/guide_calibration.yaml")[0].endswith("HeldOutSplit")
    assert split("digits/guide_calibration.yaml") == split("digits/calibrate.yaml")
