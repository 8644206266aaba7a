"""``SmoothECECalibration``: fine-tune a trained classifier (clean or noisy) with ``CE + λ · smECE``.

Javid, Bagheri & González-Prelcic 2025 (docs/math.md §4): start from a trained classifier and minimise cross-entropy plus
``smooth_ece_weight`` times the Smooth ECE of the batch's top-label confidences (Blasiok & Nakkiran 2023), at a fixed
bandwidth per step so that the loss is differentiable: ``bandwidth``, or by default the batch's own fixed point
``smECE_sigma = sigma`` taken on detached confidences. A noisy classifier is fine-tuned over diffusion time: each
step noises the batch once in each of K equal buckets of the classifier's ``t_range`` (t uniform in the bucket) and
averages the K losses, so calibration is asked of every noise level and not only of their mixture.

Data: fit on data the classifier never trained on (``lightning_guidance.data.heldout_split.HeldOutSplit``):
on its own training set a classifier is already confident and right, so there is nothing to calibrate.

Reported: accuracy, binned ECE and Smooth ECE on the validation data (per time bucket for a noisy classifier, see
:class:`~lightning_guidance.metrics.classifier_calibration.ClassifierCalibration`) before fine-tuning (Lightning's
sanity check, which the config runs over the whole validation set: ``num_sanity_val_steps: -1``) and after (the last validation), logged as
``val/<metric>_before`` and ``val/<metric>``, and written to ``<default_root_dir>/metrics_table.{md,json}`` with
reliability diagrams ``calibration_{before,after}.png``.

Output: besides Lightning's checkpoints (which resume this fine-tune), ``<default_root_dir>/checkpoints/
calibrated_classifier.ckpt`` holds the fine-tuned network in the source classifier's format (its ``net`` spec and
``Classifier`` hyper-parameters): ``TrainedClassifier(checkpoint=...)`` loads it, so it plugs into every guidance
term, and into a judge.
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from ..calibration.ece import bucket_name, time_buckets
from ..calibration.loss import calibration_loss
from ..data.rank_split import LoaderBatchIds
from ..diffusion.denoiser import check_labels
from ..diffusion.noise import GlobalBatchDraws
from ..io.checkpoints import read_checkpoint, write_net_checkpoint
from ..io.figures import save_calibration_over_time
from ..io.tables import write_table
from ..metrics.classifier_calibration import ClassifierCalibration
from ..nets.classifier_head import classifier_head
from .classifier import Classifier
from .common import adamw_with_warmup, check_against_datamodule, check_finite_loss, global_batch_draws, reseed_for_step
from .trainer_io import log_image

TRAINABLE = ("all", "head")
CALIBRATED_CLASSIFIER = "calibrated_classifier.ckpt"


class SmoothECECalibration(L.LightningModule):
    """Fine-tunes a trained classifier with ``CE + smooth_ece_weight * smECE`` (``configs/digits/calibrate.yaml``).

    Args:
        checkpoint: the classifier to fine-tune (a ``Classifier`` checkpoint, clean or noisy).
        smooth_ece_weight: lambda, >= 0 (0: cross-entropy only, the control).
        bandwidth: Smooth ECE's kernel bandwidth in (0, 1], or null: the batch's own fixed point.
        trainable: ``all`` (every weight) or ``head`` (the last class layer only).
        lr: AdamW learning rate (> 0).
        weight_decay: AdamW weight decay (>= 0).
        warmup_steps: steps of linear learning-rate warm-up (>= 0).
        num_t_buckets: time buckets a noisy classifier is calibrated over (default: the classifier's own).
        n_bins: bins of the binned ECE reported beside Smooth ECE.
        use_ema: start from the classifier's EMA weights (else its raw ones).
        noise_seed: seed of the per-step noise draws.
        eval_seed: seed of the fixed noise of the validation measurements.
    """

    def __init__(
        self,
        checkpoint: str,
        smooth_ece_weight: float = 1.0,
        bandwidth: float | None = None,
        trainable: str = "all",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        num_t_buckets: int | None = None,
        n_bins: int = 10,
        use_ema: bool = True,
        noise_seed: int = 0,
        eval_seed: int = 0,
    ):
        super().__init__()
        if smooth_ece_weight < 0:
            raise ValueError(f"smooth_ece_weight must be >= 0 (0 = cross-entropy only), got {smooth_ece_weight}")
        if bandwidth is not None and not 0 < bandwidth <= 1:
            raise ValueError(f"bandwidth must lie in (0, 1] (or be null: the batch's fixed point), got {bandwidth}")
        if trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {TRAINABLE}, got {trainable!r}")
        self.save_hyperparameters()
        source = Classifier.from_checkpoint(checkpoint, use_ema=use_ema)
        self.source_hparams = dict(read_checkpoint(checkpoint)["hyper_parameters"])
        self.net = source.net.requires_grad_(trainable == "all")
        if trainable == "head":
            classifier_head(self.net, source.num_classes)[1].requires_grad_(True)
        self.schedule = source.schedule
        self.noisy = bool(source.hparams.noisy)
        k = num_t_buckets if num_t_buckets is not None else (source.hparams.num_t_buckets if self.noisy else 1)
        self.buckets = time_buckets(source.hparams.t_range, k) if self.noisy else None
        self.val_calibration = ClassifierCalibration(self.buckets, n_bins=n_bins, seed=eval_seed)
        self._batch_ids = LoaderBatchIds()
        self.before: dict[str, float] | None = None
        self.after: dict[str, float] | None = None
        self.after_step: int | None = None

    @property
    def num_classes(self) -> int:
        return int(self.net.num_classes)

    def setup(self, stage: str) -> None:
        check_against_datamodule(self, "SmoothECECalibration", check_classes=False)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        return self.net(x, t)

    # ---- training ---------------------------------------------------------------------------------
    def _noised(self, x0: Tensor, bucket: tuple[float, float], draws: GlobalBatchDraws) -> tuple[Tensor, Tensor]:
        top = self.schedule.num_train_steps - 1
        lo, hi = round(bucket[0] * top), round(bucket[1] * top)
        index = draws.randint(lo, hi + 1, x0.shape[0], device=x0.device)
        x_t = self.schedule.q_sample(x0, index, draws.randn_like(x0))
        return x_t, self.schedule.model_time(index).to(x0)

    def training_step(self, batch, batch_idx):
        x0, y = batch
        check_labels(y, self.num_classes)
        reseed_for_step(self.hparams.noise_seed, self.global_step)
        draws = global_batch_draws(self)
        views = [(x0, None)] if self.buckets is None else [self._noised(x0, b, draws) for b in self.buckets]
        hp = self.hparams
        gather = None
        if self.trainer.world_size > 1:
            def gather(t: Tensor) -> Tensor:  # (W, n) stacked by rank, differentiable -> (W * n,)
                return self.all_gather(t, sync_grads=True).flatten(0, 1)
        parts = [calibration_loss(self.net(x, t), y, hp.smooth_ece_weight, hp.bandwidth, gather) for x, t in views]
        loss, ce, smooth = (torch.stack(v).mean() for v in zip(*parts))
        check_finite_loss(loss, self.global_step)
        self.log_dict({"train/loss": loss, "train/ce": ce, "train/smooth_ece": smooth}, prog_bar=True, sync_dist=True)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        return adamw_with_warmup(params, hp.lr, hp.weight_decay, hp.warmup_steps)

    # ---- validation: before (sanity check over the whole split) and after -----------------------------
    def on_fit_start(self) -> None:
        # Lightning's sanity check is its one validation pass before training, so it gives the "before" figures; the
        # config asks for it over the whole split (num_sanity_val_steps: -1, which Lightning stores as inf), as a
        # partial one would report figures of a few batches. A resumed fine-tune already has them.
        if self.global_step == 0 and self.before is None and self.trainer.num_sanity_val_steps != float("inf"):
            raise ValueError("SmoothECECalibration takes its 'before' figures from Lightning's sanity check over the "
                             "whole validation split: set trainer.num_sanity_val_steps: -1 (configs/digits/"
                             f"calibrate.yaml does), not {self.trainer.num_sanity_val_steps}")

    def on_validation_epoch_start(self) -> None:
        self._batch_ids.reset()
        self.val_calibration.reset()

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x0, y = batch
        ids, keep = self._batch_ids(self.trainer, batch_idx, len(y), dataloader_idx)
        keep = keep.to(y.device)
        self.val_calibration.update(self.net, self.schedule, x0[keep], y[keep], ids[keep.cpu()].to(y.device))

    def on_validation_epoch_end(self) -> None:
        figures = self.val_calibration.compute()  # collective
        if self.trainer.sanity_checking:
            if self.global_step == 0 and self.before is None:
                self.before = figures
                self._write_figures("before", figures)
                if self.logger is not None:
                    self.logger.log_metrics({f"val/{k}_before": v for k, v in figures.items()}, step=0)
            return
        self.after, self.after_step = figures, int(self.global_step)
        self.log_dict({f"val/{k}": v for k, v in figures.items()}, sync_dist=True)  # equal on all ranks
        self._write_figures("after", figures)  # overwritten at every validation: the last one is "after"

    def _run_dir(self) -> Path:
        return Path(self.trainer.default_root_dir)

    def _write_figures(self, when: str, figures: dict[str, float]) -> None:
        bins = self.val_calibration.bin_statistics()  # collective: every rank gets here
        if not self.trainer.is_global_zero:
            return
        names = self.val_calibration.names
        centers = [0.0] if self.buckets is None else [(a + b) / 2 for a, b in self.buckets]
        path = save_calibration_over_time(names, centers, figures, bins, self._run_dir() / f"calibration_{when}.png",
                                          title=f"{when} Smooth-ECE fine-tune")
        log_image(self.trainer, f"calibration/{when}", path)

    # ---- results -------------------------------------------------------------------------------------
    def on_fit_end(self) -> None:
        if not self.trainer.is_global_zero:
            return
        self.export_classifier(self._run_dir() / "checkpoints" / CALIBRATED_CLASSIFIER)
        self.write_table(self._run_dir())

    def summary(self) -> dict:
        hp = self.hparams
        return {"source_checkpoint": str(hp.checkpoint), "noisy": self.noisy,
                "buckets": None if self.buckets is None else [bucket_name(b) for b in self.buckets],
                "smooth_ece_weight": hp.smooth_ece_weight, "bandwidth": hp.bandwidth, "trainable": hp.trainable,
                "lr": hp.lr, "before": self.before, "after": self.after, "after_step": self.after_step}

    def export_classifier(self, path: str | Path) -> Path:
        """The fine-tuned network as a checkpoint of the source classifier's kind (``Classifier.from_checkpoint`` and
        ``TrainedClassifier`` load it)."""
        return write_net_checkpoint(path, self.net, self.source_hparams, global_step=int(self.global_step),
                                    smooth_ece_calibration=self.summary())

    def write_table(self, root: str | Path) -> None:
        """``metrics_table.{json,md}``: before / after figures of the fine-tune."""
        info = self.summary()
        keys = list((self.after or self.before or {}).keys())
        intro = (f"Smooth-ECE calibration of `{info['source_checkpoint']}` (λ = {info['smooth_ece_weight']}, "
                 f"trainable: {info['trainable']}, lr {info['lr']}); validation on held-out data"
                 + (f", after = step {self.after_step}" if self.after_step is not None else ""))
        rows = [(k, "" if self.before is None else f"{self.before[k]:.4f}",
                 "" if self.after is None else f"{self.after[k]:.4f}") for k in keys]
        write_table(root, "metrics_table", info, intro, ["metric", "before", "after"], rows)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["smooth_ece_calibration"] = self.summary()
        checkpoint["classifier_hyper_parameters"] = copy.deepcopy(self.source_hparams)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        info = checkpoint.get("smooth_ece_calibration") or {}
        self.before, self.after, self.after_step = info.get("before"), info.get("after"), info.get("after_step")
