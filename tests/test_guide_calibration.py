"""``cli.py test`` of configs/digits/guide_calibration.yaml: the integral ECE of a guide on what it reads while sampling
(x_t for a noisy classifier, the denoised x0_hat for an off-the-shelf one), written to guide_calibration.json.

Oracle: torchmetrics' ``MulticlassCalibrationError`` (l1, 10 bins) on the same noised images, read by hand (the
diffusion model's x0 at the bucket's training step, clamped), averaged over the buckets.
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
from lightning_guidance.diffusion.sampling import build_denoiser
from lightning_guidance.metrics.classifier_calibration import noised_views
from lightning_guidance.modules.cfg_diffusion import CFGDiffusion
from lightning_guidance.nets import TrainedClassifier

N, BUCKETS = 150, 3  # more than one test batch (128), fewer than the split


@pytest.fixture(scope="module")
def checkpoint_for(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory)


def expected(cfg_ckpt, clf_ckpt, x0_hat: bool) -> list[float]:
    dm = DigitsDataModule(batch_size=128, val_fraction=0.2, seed=0)
    dm.setup("test")
    x0, y = (torch.cat(parts)[:N] for parts in zip(*[(b[0], b[1]) for b in dm.test_dataloader()]))
    diffusion, classifier = CFGDiffusion.from_checkpoint(cfg_ckpt), TrainedClassifier(str(clf_ckpt))
    schedule = diffusion.schedule
    top = schedule.num_train_steps - 1
    eces = []
    with torch.no_grad():
        for (a, b), (x_t, t) in zip(time_buckets((0, 1), BUCKETS),
                                    noised_views(schedule, x0, torch.arange(N), time_buckets((0, 1), BUCKETS), 0)):
            if x0_hat:
                abar = schedule.abar(torch.full((N,), round((a + b) / 2 * top))).float()
                logits = classifier(build_denoiser(diffusion)(x_t, t, abar, y).x0.clamp(-1, 1), None)
            else:
                logits = classifier(x_t, t)
            metric = MulticlassCalibrationError(num_classes=10, n_bins=10, norm="l1")
            eces.append(float(metric(logits.float().softmax(1), y)))
    return eces


@pytest.mark.parametrize("guidance, x0_hat", [("guidance/cg.yaml", False), ("guidance/offtheshelf.yaml", True)])
def test_integral_ece_of_a_guide_on_its_input(tmp_path, checkpoint_for, guidance, x0_hat):
    term = composed("digits/sampling.yaml", guidance)["model"]["init_args"]["sweep"]["terms"][0]
    clf = checkpoint_for(term["init_args"]["classifier"]["init_args"]["checkpoint"])
    term["init_args"]["classifier"]["init_args"]["checkpoint"] = str(clf)
    cfg = checkpoint_for("runs/digits/cfg/checkpoints/last.ckpt")
    edits = tmp_path / "edits.yaml"
    edits.write_text(yaml.safe_dump({"model": {"init_args": {
        "checkpoint": str(cfg), "term": term, "num_buckets": BUCKETS, "num_samples": N, "output_dir": str(tmp_path)}},
        "trainer": {"default_root_dir": str(tmp_path), "enable_progress_bar": False}}))
    cli("test", "--config", CONFIGS / "digits/guide_calibration.yaml", "--config", edits)
    result = json.loads((tmp_path / "guide_calibration.json").read_text())
    eces = expected(cfg, clf, x0_hat)
    assert result["num_samples"] == N and len(result["buckets"]) == BUCKETS
    assert result["ece_per_bucket"] == pytest.approx(eces, abs=1e-6)
    assert result["integral_ece"] == pytest.approx(sum(eces) / BUCKETS, abs=1e-6)
    assert result["term"]["input"] == ("x0_hat" if x0_hat else "x_t")
