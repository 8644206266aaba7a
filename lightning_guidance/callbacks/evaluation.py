"""Sample quality while a diffusion model trains: Fréchet distance in a judge's feature space, precision/recall,
conditional accuracy and classifier score under the judge, for M generated samples at each value of a sweep
(by default of the CFG scale; see :class:`~lightning_guidance.guidance.sweep.Sweep`).

Every ``every_n_epochs`` epochs (and at every ``validate``), during the validation epoch: the real side is the
validation batches themselves (padded repeats of the distributed sampler dropped by sample index); the generated
side is M samples with ids ``0..M-1`` split into one block per rank (label ``id % num_classes``, seed
``seed + id``), drawn at the first validation batch, when every callback's ``on_validation_epoch_start`` has run —
so an EMA callback has swapped its average in, whatever the callback order. Figures are computed collectively and
logged as ``val/<metric>/<target>_<value>`` (e.g. ``val/fd_digits/cfg_3``); ``<log_dir>/<dirname>/epochNNNN.{json,png}``.

The judge (and an optional Inception network) lives in this callback, never in the trained module: it lands in no
checkpoint and no EMA copy.
"""

from __future__ import annotations

import json

import lightning as L
import torch
from torch import nn

from ..data.rank_split import LoaderBatchIds, check_enough_per_rank, owned_block
from ..diffusion.sampling import check_sampling, sample_ids
from ..guidance.sweep import Sweep
from ..io.atomic import atomic_write_text
from ..io.figures import save_metrics_vs_value
from ..metrics.sample_quality import SampleQuality
from ..modules.cfg_diffusion import CFGDiffusion
from ..modules.trainer_io import evaluation_due, figure_dir, log_image


class SampleQualityEvaluation(L.Callback):
    """Sample quality while a diffusion model trains: Fréchet distance, precision/recall, judge accuracy per value.

    Args:
        judge: the grading classifier (``lightning_guidance.metrics.judge.Judge``).
        every_n_epochs: evaluate every N validation epochs (>= 1; and at every ``validate``).
        num_samples: generated samples per sweep value (>= 1).
        sweep: the values to evaluate at, as in ``SamplingModule`` (default: CFG scale 1).
        sampler: ``ddpm``, ``ddim`` or ``edm``.
        sampler_kwargs: the sampler's options (e.g. ``{num_steps: 50}``).
        seed: sample ``i`` uses seed ``seed + i``.
        batch_size: samples per sampler call (>= 1).
        fd_name: the name of the Fréchet distance in the judge's features (``fd_digits``).
        precision_recall_k: k of the k-NN precision/recall (>= 1).
        inception_weights: a local Inception weights file: adds Inception FID.
        dirname: the folder under the run's log folder.
    """

    def __init__(self, judge: nn.Module, every_n_epochs: int = 1, num_samples: int = 100, sweep: Sweep | None = None,
                 sampler: str = "ddim", sampler_kwargs: dict | None = None, seed: int = 0, batch_size: int = 100,
                 fd_name: str = "fd_judge", precision_recall_k: int = 3, inception_weights: str | None = None,
                 dirname: str = "evaluation"):
        if every_n_epochs < 1 or num_samples < 1 or batch_size < 1:
            raise ValueError("every_n_epochs, num_samples and batch_size must be >= 1")
        self.sweep = sweep if sweep is not None else Sweep()
        self.sampler_kwargs = check_sampling(sampler, sampler_kwargs, self.sweep.terms)
        self.judge = judge
        self.every_n_epochs, self.num_samples, self.batch_size = every_n_epochs, num_samples, batch_size
        self.sampler, self.seed = sampler, seed
        self.groups = [self.sweep.folder(v) for v in self.sweep.values]
        # built here, so that a missing Inception weights file is reported before any training
        self.quality = SampleQuality(judge, self.groups, fd_name, precision_recall_k, inception_weights=inception_weights)
        self.dirname = dirname
        self.last: dict[str, dict[str, float]] | None = None
        self._batch_ids = LoaderBatchIds()
        self._active = False

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if not isinstance(pl_module, CFGDiffusion):
            raise TypeError(f"SampleQualityEvaluation evaluates a CFGDiffusion model while it trains; "
                            f"got {type(pl_module).__name__}")
        if self.judge.num_classes != pl_module.num_classes:
            raise ValueError(f"the judge knows {self.judge.num_classes} classes, the diffusion model "
                             f"{pl_module.num_classes}: judge with a classifier trained on the same data")
        if self.judge.data_shape and tuple(self.judge.data_shape) != tuple(pl_module.data_shape):
            raise ValueError(f"the judge takes samples of shape {tuple(self.judge.data_shape)}, the diffusion model "
                             f"makes {tuple(pl_module.data_shape)}")
        check_enough_per_rank(self.num_samples, trainer.world_size, "SampleQualityEvaluation num_samples")

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        self._active = evaluation_due(trainer, self.every_n_epochs)
        if self._active:
            self._batch_ids.reset()
            self.quality.to(pl_module.device).reset()

    def _generate(self, trainer: L.Trainer, pl_module) -> None:
        ids = torch.tensor(list(owned_block(self.num_samples, trainer.global_rank, trainer.world_size)))
        classes = list(range(pl_module.num_classes))
        weak_model = pl_module.weak_model(self.sweep.cfg_rule)
        for value, group in zip(self.sweep.values, self.groups):
            sample_ids(pl_module, ids, classes, self.seed, sampler=self.sampler, sampler_kwargs=self.sampler_kwargs,
                       setting=self.sweep.at(value, weak_model), batch_size=self.batch_size,
                       on_batch=lambda x, y, g=group: self.quality.update_generated(g, x, y))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._active or dataloader_idx != 0:
            return
        if batch_idx == 0:
            self._generate(trainer, pl_module)
        x, y = batch[0], batch[1]
        _, keep = self._batch_ids(trainer, batch_idx, len(y), dataloader_idx)
        keep = keep.to(y.device)
        if keep.any():
            self.quality.update_real(x[keep], y[keep])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if not self._active:
            return
        self._active = False
        rows = {g: self.quality.compute(g) for g in self.groups}  # collective, same order on every rank
        real = self.quality.compute_real()
        self.last = rows
        for g, row in rows.items():
            pl_module.log_dict({f"val/{k}/{g}": v for k, v in row.items()}, sync_dist=True)  # equal on all ranks
        out_dir = figure_dir(trainer, self.dirname)  # collective
        if not trainer.is_global_zero:
            return
        name = f"epoch{trainer.current_epoch:04d}"
        atomic_write_text(out_dir / f"{name}.json", json.dumps(
            {"epoch": trainer.current_epoch, "step": trainer.global_step, "num_samples": self.num_samples,
             "sampler": self.sampler, "sampler_kwargs": self.sampler_kwargs, "sweep_target": self.sweep.target,
             "sweep_values": self.sweep.values,
             "judge": getattr(self.judge, "checkpoint", None), "real_data_judge": real, "rows": rows}, indent=2))
        path = save_metrics_vs_value(self.sweep.values, list(rows.values()), out_dir / f"{name}.png", self.sweep.axis,
                                     title=f"epoch {trainer.current_epoch}, {self.num_samples} samples per value")
        log_image(trainer, f"evaluation/metrics_vs_{self.sweep.target}", path)
