"""``metrics.csv`` that keeps its history: a resumed fit continues the file, a re-run never deletes it.

Lightning's CSVLogger deletes ``metrics.csv`` when its folder is not empty, so a resume lost every row before the
resume step. :class:`HistoryCSVLogger` instead reconciles the file with the run at the first row it logs, at step s:

- rows at steps < s are kept: the history up to the checkpoint this run resumed from;
- rows at steps > s were written by an earlier process after that checkpoint (it was killed, or the run is resumed
  from an older checkpoint); this run logs those steps again, so they are dropped and every step appears once;
  One exception: a run resumed from the checkpoint of an epoch's last batch first logs that epoch's validation, at
  the step of that batch's training row; that row is history and stays (:mod:`.epoch_end_resume` names its
  metrics in ``keep_at_first_step``);
- if every row is at a step >= s, the file is the history of another run (a fresh fit in the same folder): it is
  kept as ``metrics.1.csv`` (``.2``, ...) and a new file begins.

Each row is appended and flushed as it is logged, so a killed run loses no row it logged. A run that logs nothing
(a finished run resumed) leaves the file untouched. Rewrites (a new column, the reconciliation) go through a temp
file and a rename.

The rows up to a checkpoint's step are on disk before the checkpoint is: Lightning logs a training step's row only
after the ``on_train_batch_end`` hooks, in which ModelCheckpoint saves, so a kill between the two lost the row of the
checkpoint's own step (the resume starts after it). :class:`RowsBeforeCheckpoint` (ordered before every checkpoint
callback, as Lightning puts those last) logs that row into the file first; Lightning's own copy of it is then
dropped. Every checkpoint save fsyncs the file.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import lightning as L
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from ..io.atomic import DiskFullError, atomic_write_text, is_disk_full, keep_aside


_NOT_METRICS = {"step", "epoch"}


def _metrics_of(row: dict) -> set[str]:
    """The metrics a row holds (its non-empty columns but the step and epoch)."""
    return {k for k, v in row.items() if v not in (None, "")} - _NOT_METRICS


def _rows_text(keys: list[str], rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


class _HistoryWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        self._reconciled = False
        self._last: tuple[int | None, dict] | None = None  # the newest row: (step, metrics)
        self._ahead: tuple[int | None, dict] | None = None  # a row logged ahead of Lightning's own copy of it
        self.keep_at_first_step: set[str] = set()  # metrics of the row at the first logged step that stays
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv here
        return None

    def _reconcile(self, first_step: int) -> None:
        self._reconciled = True
        path = Path(self.metrics_file_path)
        if not path.is_file() or path.stat().st_size == 0:
            return
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            keys, rows = list(reader.fieldnames or []), list(reader)
        step_of = lambda r: int(float(r["step"])) if r.get("step") not in (None, "") else None  # noqa: E731
        earlier = [r for r in rows if step_of(r) is not None and step_of(r) < first_step]
        if rows and not earlier:
            keep_aside(path)
            return
        keep = self.keep_at_first_step
        kept = [r for r in rows if step_of(r) is not None and (step_of(r) < first_step or step_of(r) == first_step
                                                               and keep and _metrics_of(r) <= keep)]
        self.metrics_keys = sorted(keys)
        if len(kept) != len(rows):
            atomic_write_text(path, _rows_text(self.metrics_keys, kept))

    def log_metrics(self, metrics_dict: dict, step: int | None = None) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == step:  # Lightning's copy of the row logged ahead: only what it adds
            metrics_dict = {k: v for k, v in metrics_dict.items() if k not in ahead[1] or ahead[1][k] != v}
            if not metrics_dict:
                return
        if not self._reconciled:
            self._reconcile(step if step is not None else 0)
        super().log_metrics(metrics_dict, step)
        self._last = (step, dict(metrics_dict))

    def expect_again(self) -> None:
        """Lightning will log the newest row again at the same step: drop the values that copy repeats."""
        self._ahead = self._last

    def fsync(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            fd = os.open(self.metrics_file_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        atomic_write_text(self.metrics_file_path, _rows_text(fieldnames, rows))

    def save(self) -> None:
        if not self.metrics:
            return
        new_keys = self._record_new_keys()
        exists = os.path.isfile(self.metrics_file_path) and os.path.getsize(self.metrics_file_path) > 0
        if new_keys and exists:
            self._rewrite_with_new_header(self.metrics_keys)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.metrics_keys, lineterminator="\n")
        if not exists:
            writer.writeheader()
        writer.writerows(self.metrics)
        before = os.path.getsize(self.metrics_file_path) if exists else 0
        try:
            with open(self.metrics_file_path, "a" if exists else "w", newline="") as f:
                f.write(text.getvalue())
                f.flush()
        except OSError as err:
            if is_disk_full(err):  # no half row left behind: the file as it was, and one line saying why
                os.truncate(self.metrics_file_path, before)
                raise DiskFullError(self.metrics_file_path, len(text.getvalue().encode())) from None
            raise
        self.metrics = []


class HistoryCSVLogger(CSVLogger):
    """CSVLogger (fixed folder ``<save_dir>/<name>``) that keeps every row once across resumes and re-runs.

    Args:
        save_dir: the run's folder (the suite's default: ``trainer.default_root_dir``).
        name: the sub-folder of ``metrics.csv`` (the suite's default: ``logs``).
        version: a further sub-folder (the suite's default: none).
        flush_logs_every_n_steps: kept for Lightning's signature; every row is flushed as it is logged.
    """

    def __init__(self, save_dir: str, name: str = "logs", version: str = "", flush_logs_every_n_steps: int = 1,
                 **kwargs):
        super().__init__(save_dir, name=name, version=version, flush_logs_every_n_steps=flush_logs_every_n_steps,
                         **kwargs)

    @property
    @rank_zero_experiment
    def experiment(self) -> _HistoryWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _HistoryWriter(log_dir=self.log_dir)
        return self._experiment


class RowsBeforeCheckpoint(L.Callback):
    """Puts the row of a training step into ``metrics.csv`` before that step's checkpoints are saved, and fsyncs
    the file with every checkpoint (see the module docstring). Does nothing without a :class:`HistoryCSVLogger`."""

    @staticmethod
    def _loggers(trainer) -> list[HistoryCSVLogger]:
        return [lg for lg in trainer.loggers if isinstance(lg, HistoryCSVLogger) and trainer.is_global_zero]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loggers = self._loggers(trainer)
        connector = trainer._logger_connector
        if not loggers or not connector.should_update_logs \
                or (trainer.fit_loop._should_accumulate() and pl_module.automatic_optimization):
            return  # the rules of Lightning's own update_train_step_metrics: no row at this batch
        metrics = convert_tensors_to_scalars(connector.metrics["log"])
        if not metrics:
            return
        step = metrics.pop("step", None)  # as Lightning's LoggerConnector.log_metrics chooses the step
        if step is None:
            metrics.setdefault("epoch", trainer.current_epoch)
            step = trainer.fit_loop.epoch_loop._batches_that_stepped
        for logger in loggers:
            logger.log_metrics(metrics, int(step))
            logger.save()
            logger.experiment.expect_again()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        for logger in self._loggers(trainer):
            logger.experiment.fsync()
