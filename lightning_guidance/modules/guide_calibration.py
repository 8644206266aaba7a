"""``GuideCalibration``: how well a guidance term's classifier is calibrated on what it reads while sampling.

``test`` on real data (the datamodule's test split; ``num_samples``: its first sample ids only): each image is
noised to the centre of each of ``num_buckets`` equal time buckets of [0, 1] with its own noise, as a classifier's
own validation does (:class:`~..metrics.classifier_calibration.ClassifierCalibration`), then read as the term reads
it: ``x_t`` at ``t``, or for an ``input: x0_hat`` term the diffusion model's denoised ``x0_hat`` given the null
class (the unconditional prediction: the true label is never fed, or ``x0_hat`` would carry the answer the classifier
is graded on), clamped where the model clamps, or as the term's ``clip_x0`` forces. Binned ECE per bucket and their
mean, the integral ECE ``(1/K) sum_k ECE(t_k)`` (EluCD, Ma et al.; docs/math.md §3), go to
``<output_dir>/guide_calibration.json``; each image's logits per bucket (``ids``, ``labels``, ``logits`` (N, K, C),
sorted by id) to ``<output_dir>/guide_logits.npz``, from which any subset of images (a bootstrap) or a temperature
``T`` (``logits / T``: the same classifier with ``TrainedClassifier(temperature=T)``) gives its figures again
(``metrics.calibration_intervals``).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from ..calibration.ece import time_buckets
from ..data.rank_split import LoaderBatchIds
from ..diffusion.sampling import build_denoiser
from ..guidance.log_likelihood import ClassifierTerm
from ..guidance.sweep import describe_term
from ..io.atomic import atomic_write, atomic_write_text
from ..io.digests import file_identity
from ..metrics.classifier_calibration import ClassifierCalibration
from .cfg_diffusion import CFGDiffusion

PRODUCT = "guide_calibration.json"
LOGITS = "guide_logits.npz"


class PerImageLogits(Metric):
    """Each image's id, label and logits per bucket (``cat`` states: gathered across ranks); ``compute`` sorts by id."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        for name in ("ids", "labels", "logits"):
            self.add_state(name, [], dist_reduce_fx="cat")

    def update(self, ids: Tensor, labels: Tensor, logits: Tensor) -> None:
        self.ids.append(ids.long())
        self.labels.append(labels.long())
        self.logits.append(logits.detach().float())

    def compute(self) -> dict[str, np.ndarray]:
        out = {n: dim_zero_cat(getattr(self, n)).cpu().numpy() for n in ("ids", "labels", "logits")}
        order = np.argsort(out["ids"], kind="stable")
        return {k: v[order] for k, v in out.items()}


class GuideCalibration(L.LightningModule):
    """The integral ECE of a guidance term's classifier on what it reads while sampling (``test`` only;
    ``configs/digits/guide_calibration.yaml``).

    Args:
        checkpoint: the diffusion model's checkpoint (an ``x0_hat`` term reads its denoised ``x0_hat``).
        term: the guidance term whose classifier is measured, as in a sampling config's ``sweep.terms``
            (``input: x_t`` or ``x0_hat``).
        output_dir: where ``guide_calibration.json`` goes (default: ``trainer.default_root_dir``).
        num_buckets: equal time buckets of [0, 1]; each image is noised to each bucket's centre (>= 1).
        n_bins: confidence bins of the binned ECE (>= 1).
        num_samples: the test split's first sample ids measured (null: all of it).
        seed: seed of the per-sample noise.
        use_ema: read the diffusion model's EMA weights (else the raw ones).
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
        self.per_image = PerImageLogits()
        self._batch_ids = LoaderBatchIds()

    def reader(self, seen: list[Tensor]):
        """``(x_t, t) -> logits``: the classifier on what the term reads at ``x_t`` (``x0_hat``: denoised with the
        null class); each call's logits are appended to ``seen`` (one entry per bucket, in bucket order)."""
        term, schedule = self.term, self.diffusion.schedule
        denoiser = build_denoiser(self.diffusion)  # CFG scale 1 of the null class below: eps_u, clipped as the model clips

        def read(x_t: Tensor, t: Tensor) -> Tensor:
            if term.input == "x_t":
                logits = term.classifier(x_t, t)
            else:
                abar = schedule.abar((t.double() * (schedule.num_train_steps - 1)).round()).to(x_t)
                null = torch.full((len(x_t),), self.diffusion.num_classes, dtype=torch.long, device=x_t.device)
                logits = term.classifier(term.x0_input(denoiser(x_t, t, abar, null).x0), None)
            seen.append(logits)
            return logits

        return read

    def on_test_epoch_start(self) -> None:
        self._batch_ids.reset()
        self.calibration.to(self.device).reset()
        self.per_image.to(self.device).reset()

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        x0, y = batch[0], batch[1]
        ids, keep = self._batch_ids(self.trainer, batch_idx, len(y), dataloader_idx)
        if self.hparams.num_samples is not None:
            keep = keep & (ids < self.hparams.num_samples)
        ids, keep = ids[keep].to(y.device), keep.to(y.device)
        seen: list[Tensor] = []
        self.calibration.update(self.reader(seen), self.diffusion.schedule, x0[keep], y[keep], ids)
        if seen:
            self.per_image.update(ids, y[keep], torch.stack(seen, dim=1))

    def on_test_epoch_end(self) -> None:
        figures = self.calibration.compute()  # collective
        count = self.calibration.bin_statistics()[0]
        per_image = self.per_image.compute()  # collective
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
        atomic_write(out / LOGITS, lambda tmp: np.savez(tmp, **per_image), suffix=".npz")
        atomic_write_text(out / PRODUCT, json.dumps(result, indent=2))
