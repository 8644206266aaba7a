"""The console of a run: a progress bar that counts optimizer steps and times the whole run, a model summary of one
line, and one line when a fit logged no training metrics."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, RichProgressBar
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_summary import summarize
from lightning.pytorch.utilities.model_summary.model_summary import get_human_readable_count


class StepProgressBar(RichProgressBar):
    """Lightning's rich bar, with the training task showing ``step / max_steps`` (``Epoch 24/-2`` otherwise) and the
    time since the fit started (Lightning restarts the task, and its clock, at every epoch)."""

    @property
    def total_train_batches(self):
        max_steps = self.trainer.max_steps
        return max_steps if max_steps and max_steps > 0 else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        return f"Training (epoch {current_epoch}), step"

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.progress is not None and self.train_progress_bar_id is not None and not self._leave:
            self.progress.update(self.train_progress_bar_id, visible=True,
                                 description=self._get_train_description(trainer.current_epoch))
        else:
            super().on_train_epoch_start(trainer, pl_module)
        self._update(self.train_progress_bar_id, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()


class OneLineSummary(ModelSummary):
    """The module's size in one line: ``CFGDiffusion: 706 K parameters (706 K trainable, 2.8 MB): net UNet 706 K``
    (Lightning's table adds a FLOPs column that is all zeros unless the module defines ``example_input_array``)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        if not self._max_depth or not trainer.is_global_zero:
            return
        summary = summarize(pl_module, max_depth=self._max_depth)
        data = dict(summary._get_summary_data())
        parts = [f"{name} {kind} {params}" for name, kind, params in zip(data["Name"], data["Type"], data["Params"])]
        rank_zero_info(f"{type(pl_module).__name__}: {get_human_readable_count(summary.total_parameters)} parameters "
                       f"({get_human_readable_count(summary.trainable_parameters)} trainable, "
                       f"{summary.model_size:.1f} MB)" + (f": {', '.join(parts)}" if parts else ""))


class NothingLoggedNote(L.Callback):
    """One line at the end of a fit that trained steps but logged none of them: Lightning logs every
    ``log_every_n_steps``-th step, so a fit shorter than that leaves no training row in ``metrics.csv``."""

    def __init__(self):
        self._start: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        every, end = trainer.log_every_n_steps, trainer.global_step
        if self._start is None or not trainer.loggers or end <= self._start or end // every > self._start // every:
            return
        rank_zero_info(f"no training metrics were logged: this fit ran steps {self._start + 1}-{end} and logs every "
                       f"{every}th step (--trainer.log_every_n_steps {every}; lower it to log a short run)")
