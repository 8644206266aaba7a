"""``GuideCalibration``: how well a guidance term's classifier is calibrated on what it reads while sampling.

``test`` on real data (the datamodule's test split; ``num_samples``: its first sample ids only): each image is
noised to the centre of each of ``num_buckets`` equal time buckets of [0, 1] with its own noise, as a classifier's
own validation does (:class:`~..metrics.classifier_calibration.ClassifierCalibration`), then read as the term reads
it: ``x_t`` at ``t``, or for an ``input: x0_hat`` term the diffusion model's denoised ``x0_hat`` (CFG scale 1,
clamped when the term clamps). Binned ECE per bucket and their mean, the integral ECE ``(1/K) sum_k ECE(t_k)``
(EluCD, Ma et al.; docs/math.md §3), go to ``<output_dir>/guide_calibration.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from torch import Tensor

from ..calibration.ece import time_buckets
from ..data.rank_split import LoaderBatchIds
from ..guidance.log_likelihood import ClassifierTerm
from ..guidance.sweep import describe_term
from ..io.atomic import atomic_write_text
from ..io.digests import file_identity
from ..metrics.classifier_calibration import ClassifierCalibration
from .cfg_diffusion import CFGDiffusion

PRODUCT = "guide_calibration.json"


class GuideCalibration(L.LightningModule):
    """Integral ECE of a guidance term's classifier on what the term reads (``test`` only).

    Args:
        checkpoint: the diffusion model's checkpoint: its schedule noises the images, and an ``input: x0_hat`` term
            reads its denoised ``x0_hat``.
        term: the guidance term whose classifier is measured (a classifier-based term, e.g.
            ``lightning_guidance.guidance.OffTheShelfGuidance``): its ``input`` (``x_t`` or ``x0_hat``) and clamping.
        output_dir: where ``guide_calibration.json`` goes (default: ``trainer.default_root_dir``).
        num_buckets: equal time buckets of [0, 1] (>= 1); each image is noised to every bucket's centre.
        n_bins: confidence bins of each bucket's ECE (>= 1).
        num_samples: the first sample ids of the test split only (>= 1; null: all of it).
        seed: seed of the per-sample noise.
        use_ema: the diffusion model's EMA weights (else the raw ones).
    """

    def __init__(self, checkpoint: str, term: ClassifierTerm, output_dir: str | None = None, num_buckets: int = 4,
                 n_bins: int = 10, num_samples: int | None = None, seed: int = 0, use_ema: bool = True):
        super().__init__()
        if num_samples is not None and num_samples < 1:
            raise ValueError(f"num_samples must be >= 1 (or null: the whole test split), got {num_samples}")
        self.save_hyperparameters(ignore=["term"])
        self.term, self.classifier = term, term.classifier  # registered: it moves to the device with this module
        self.diffusion = CFGDiffusion.from_checkpoint(checkpoint, use_ema=use_ema).requires_grad_(False)
        self.calibration = ClassifierCalibration(time_buckets((0.0, 1.0), num_buckets), n_bins=n_bins, seed=seed)
        self._batch_ids = LoaderBatchIds()

    def reader(self, labels: Tensor):
        """``(x_t, t) -> logits``: the classifier on what the term reads at ``x_t``."""
        term, schedule = self.term, self.diffusion.schedule
        if term.input == "x_t":
            return term.classifier
        denoiser = self.diffusion.denoiser(1.0)

        def read(x_t: Tensor, t: Tensor) -> Tensor:
            abar = schedule.abar((t.double() * (schedule.num_train_steps - 1)).round()).to(x_t)
            return term.classifier(term.x0_input(denoiser(x_t, t, abar, labels).x0), None)

        return read

    def on_test_epoch_start(self) -> None:
        self._batch_ids.reset()
        self.calibration.to(self.device).reset()

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        x0, y = batch[0], batch[1]
        ids, keep = self._batch_ids(self.trainer, batch_idx, len(y), dataloader_idx)
        if self.hparams.num_samples is not None:
            keep = keep & (ids < self.hparams.num_samples)
        ids, keep = ids[keep].to(y.device), keep.to(y.device)
        self.calibration.update(self.reader(y[keep]), self.diffusion.schedule, x0[keep], y[keep], ids)

    def on_test_epoch_end(self) -> None:
        figures = self.calibration.compute()  # collective
        count = self.calibration.bin_statistics()[0]
        self.log("test/integral_ece", figures["ece"], sync_dist=True)
        if not self.trainer.is_global_zero:
            return
        out = Path(self.hparams.output_dir or self.trainer.default_root_dir)
        names = self.calibration.names
        result = {"integral_ece": figures["ece"], "buckets": names,
                  "ece_per_bucket": [figures[f"ece_{n}"] for n in names], "accuracy": figures["acc"],
                  "smooth_ece": figures["smooth_ece"], "num_samples": int(count[0].sum()),
                  "n_bins": self.hparams.n_bins, "seed": self.hparams.seed, "term": describe_term(self.term),
                  "checkpoint": file_identity(self.hparams.checkpoint)}
        atomic_write_text(out / PRODUCT, json.dumps(result, indent=2))
