"""A checkpoint taken at the end of an epoch's last training batch resumes into that epoch's end, not past it.

The suite's periodic, stop and final checkpoints are saved in ``on_train_batch_end``; at an epoch's last batch that
is *before* the epoch's validation and its ``on_train_epoch_end`` hooks. Lightning (2.6) restores such a checkpoint
as a finished epoch: the validation is never run (its ``val/*`` row is lost for good), the epoch-end and the next
epoch's start hooks are skipped and the epoch counters drift. :class:`EpochEndResume` rewrites the loop state of such
a checkpoint, as it is saved, into the state Lightning resumes by running the rest of the batch's end:

- the batch counts as completed (it is: only Lightning's own ``increment_completed`` had not run yet);
- if validation is due after this batch, the validation loop counts as started (one batch ``started``, none
  processed), which Lightning restores as "restarted mid-evaluation": it runs that validation, then the epoch end;
  the extra ``started``/``ready`` is taken back once the loops are restored (``on_train_start``), so that every
  counter ends as in the straight run;
- if no validation is due, the batch's ``_batches_that_stepped`` increment is applied (the resumed run goes straight
  to the epoch end).

The resumed run then logs the validation row at the step the straight run logged it: the training row of that
step, on disk before the checkpoint, is kept by ``HistoryCSVLogger`` (told its metrics), and any later row a killed
run wrote is replaced.
"""

from __future__ import annotations

import lightning as L

from .csv_history import HistoryCSVLogger

MARK = "lightning_guidance/validation_pending"  # checkpoint key: the metrics of the batch's own row, logged before


def _at_last_batch_end(trainer: L.Trainer, progress: dict) -> bool:
    """Saved inside ``on_train_batch_end`` of the epoch's last batch (processed, not yet completed)."""
    total = progress["total"]
    batch_end = total["started"] == total["ready"] == total["processed"] == total["completed"] + 1
    return batch_end and trainer.fit_loop.epoch_loop._num_ready_batches_reached()


class EpochEndResume(L.Callback):
    def __init__(self):
        self._pending: list[str] | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if not trainer.training or trainer.sanity_checking:
            return
        fit = checkpoint.get("loops", {}).get("fit_loop")
        if fit is None or not _at_last_batch_end(trainer, fit["epoch_loop.batch_progress"]):
            return
        epoch_loop = trainer.fit_loop.epoch_loop
        if epoch_loop._should_accumulate():
            return
        for tracker in fit["epoch_loop.batch_progress"].values():
            if isinstance(tracker, dict):
                tracker["completed"] = tracker["processed"]
        data_fetcher = trainer.fit_loop._data_fetcher
        if data_fetcher is not None and epoch_loop._should_check_val_fx(data_fetcher):
            val = fit["epoch_loop.val_loop.batch_progress"]
            done = val["total"]["completed"]
            val["total"].update(ready=done + 1, started=done + 1, processed=done)
            val["current"].update(ready=1, started=1, processed=0, completed=0)
            logged = trainer._logger_connector.metrics["log"]
            checkpoint[MARK] = sorted(set(logged) - {"step", "epoch"})
        else:
            fit["epoch_loop.state_dict"]["_batches_that_stepped"] += 1

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._pending = checkpoint.get(MARK)

    def on_train_start(self, trainer, pl_module) -> None:
        # the loops are restored and their restart stage is set: take back the validation batch counted as started
        val_loop = trainer.fit_loop.epoch_loop.val_loop
        if self._pending is not None and val_loop.restarted_mid_evaluation:
            val_loop.batch_progress.total.ready -= 1
            val_loop.batch_progress.total.started -= 1
            for logger in trainer.loggers:
                if isinstance(logger, HistoryCSVLogger) and trainer.is_global_zero:
                    logger.experiment.keep_at_first_step = set(self._pending)
        self._pending = None
