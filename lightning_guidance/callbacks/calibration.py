"""ECE over diffusion time and reliability diagrams of a classifier, measured during its validation.

For a ``Classifier`` (or anything with ``net``, ``schedule`` and ``hparams.noisy`` / ``hparams.t_range``): every
validation batch is noised to the centre of each of ``num_buckets`` time buckets with per-sample noise (see
:class:`~lightning_guidance.metrics.classifier_calibration.ClassifierCalibration`); a clean classifier is measured on
clean images. Padded repeats of Lightning's distributed sampler are dropped by sample index, states reduce across
ranks, so one and several processes give the same figures. Logged: ``val/ece``, ``val/smooth_ece`` (means over the
buckets: ``val/ece`` is the integral ECE) and ``val/ece_<bucket>``, ``val/smooth_ece_<bucket>``; a PNG per validation
under ``<log_dir>/calibration/`` (ECE and Smooth ECE against t, reliability per bucket), and ``latest.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from ..data.rank_split import LoaderBatchIds
from ..io.atomic import atomic_write_text
from ..io.figures import save_calibration_over_time
from ..calibration.ece import time_buckets
from ..metrics.classifier_calibration import ClassifierCalibration
from ..modules.trainer_io import evaluation_due, figure_dir, log_image


class CalibrationOverTime(L.Callback):
    """ECE and Smooth ECE of a classifier over diffusion time, with reliability diagrams, at every N-th validation.

    Args:
        num_buckets: time buckets (default: the classifier's ``num_t_buckets``; 1 for a clean classifier).
        n_bins: bins of the binned ECE and of the reliability diagrams.
        seed: seed of the fixed per-sample noise.
        every_n_epochs: measure every N validation epochs (>= 1).
        dirname: the folder under the run's log folder.
    """

    def __init__(self, num_buckets: int | None = None, n_bins: int = 10, seed: int = 0, every_n_epochs: int = 1,
                 dirname: str = "calibration"):
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.num_buckets, self.n_bins, self.seed = num_buckets, n_bins, seed
        self.every_n_epochs, self.dirname = every_n_epochs, dirname
        self.calibration: ClassifierCalibration | None = None
        self.last: dict[str, float] | None = None
        self.last_path: Path | None = None
        self._batch_ids = LoaderBatchIds()
        self._active = False

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        for attr in ("net", "schedule"):
            if not hasattr(pl_module, attr):
                raise TypeError(f"CalibrationOverTime measures a classifier module with `net` and `schedule` "
                                f"(e.g. Classifier); {type(pl_module).__name__} has no `{attr}`")
        hp = pl_module.hparams
        if hasattr(pl_module, "buckets"):  # SmoothECECalibration: the buckets it fine-tunes over (None: clean)
            buckets = pl_module.buckets
        elif hp.get("noisy", False):  # Classifier: its validation buckets, or num_buckets of its t_range
            buckets = time_buckets(hp.get("t_range", (0.0, 1.0)), self.num_buckets or hp.get("num_t_buckets", 4))
        else:
            buckets = None  # a clean classifier: measured on clean images
        self.calibration = ClassifierCalibration(buckets, n_bins=self.n_bins, seed=self.seed)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        self._active = evaluation_due(trainer, self.every_n_epochs)
        if self._active:
            self._batch_ids.reset()
            self.calibration.to(pl_module.device).reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._active or dataloader_idx != 0:
            return
        x0, y = batch[0], batch[1]
        ids, keep = self._batch_ids(trainer, batch_idx, len(y), dataloader_idx)
        keep_dev = keep.to(y.device)
        self.calibration.update(pl_module.net, pl_module.schedule, x0[keep_dev], y[keep_dev], ids[keep].to(y.device))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if not self._active:
            return
        self._active = False
        figures = self.calibration.compute()  # collective
        bins = self.calibration.bin_statistics()  # collective
        self.last = figures
        pl_module.log_dict({f"val/{k}": v for k, v in figures.items() if not k.startswith("acc")}, sync_dist=True)
        out_dir = figure_dir(trainer, self.dirname)  # collective
        if not trainer.is_global_zero:
            return
        names = self.calibration.names
        centers = [0.0] if self.calibration.buckets is None else [(a + b) / 2 for a, b in self.calibration.buckets]
        self.last_path = save_calibration_over_time(names, centers, figures, bins,
                                                    out_dir / f"epoch{trainer.current_epoch:04d}.png",
                                                    title=f"{type(pl_module).__name__}, epoch {trainer.current_epoch}")
        atomic_write_text(out_dir / "latest.json", json.dumps({"epoch": trainer.current_epoch,
                                                                "step": trainer.global_step, **figures}, indent=2))
        log_image(trainer, "calibration/over_time", self.last_path)
