"""Every N validation epochs, draw a fixed set of samples (fixed seeds) and save a picture per sweep value (by
default of the CFG scale).

Drawn at the first validation batch, when every callback's epoch-start hook has run: the EMA callback has then
swapped in the averaged weights, whatever the order of the callbacks in the config.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from ..diffusion.sampling import check_sampling
from ..guidance.sweep import Sweep
from ..io.figures import save_sample_picture
from ..modules.trainer_io import evaluation_due, figure_dir


class SampleGrid(L.Callback):
    """A picture of fixed-seed samples per sweep value every N validation epochs (``<log_dir>/<dirname>/``).

    Args:
        every_n_epochs: draw every N validation epochs (>= 1).
        per_class: samples per class (a row each; >= 1).
        sweep: the values to draw at, as in ``SamplingModule`` (default: CFG scale 1).
        sampler: ``ddpm``, ``ddim`` or ``edm``.
        sampler_kwargs: the sampler's options (e.g. ``{num_steps: 50}``).
        seed: sample ``i`` uses seed ``seed + i``.
        dirname: the folder under the run's log folder.
    """

    def __init__(self, every_n_epochs: int = 1, per_class: int = 8, sweep: Sweep | None = None,
                 sampler: str = "ddim", sampler_kwargs: dict | None = None, seed: int = 0, dirname: str = "samples"):
        if every_n_epochs < 1 or per_class < 1:
            raise ValueError("every_n_epochs and per_class must be >= 1")
        self.every_n_epochs, self.per_class = every_n_epochs, per_class
        self.sweep, self.sampler = sweep if sweep is not None else Sweep(), sampler
        self.sampler_kwargs = check_sampling(sampler, sampler_kwargs, self.sweep.terms)
        self.seed, self.dirname = seed, dirname
        self.last_paths: list[Path] = []

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        if batch_idx or not evaluation_due(trainer, self.every_n_epochs):
            return
        out_dir = figure_dir(trainer, self.dirname)  # collective under DDP: before the rank-0 test
        if not trainer.is_global_zero:
            return  # pictures only; nothing else collective happens here
        k = pl_module.num_classes
        labels = torch.arange(k).repeat_interleave(self.per_class)
        seeds = self.seed + torch.arange(len(labels))
        self.last_paths = []
        weak_model = pl_module.weak_model(self.sweep.cfg_rule)
        for value in self.sweep.values:
            x = pl_module.generate(labels, seeds, sampler=self.sampler, setting=self.sweep.at(value, weak_model),
                                   **self.sampler_kwargs)
            tag = self.sweep.folder(value)
            path = out_dir / f"epoch{trainer.current_epoch:04d}_{tag}.png"
            title = f"{type(pl_module).__name__}, epoch {trainer.current_epoch}: {self.sweep.describe(value)}"
            self.last_paths.append(save_sample_picture(x, labels, path, title=title))
