"""Every fit ends with a checkpoint of its final step, not only of its last multiple of ``every_n_train_steps``.

At the batch that reaches ``max_steps`` (the state a periodic checkpoint is taken in, so a later fit with more steps
continues exactly), and at the end of training otherwise, each ``ModelCheckpoint`` that has not saved this step
saves as it would have on its schedule (its step file and ``last.ckpt``). A fit that trained no step (a finished
run resumed) writes nothing, so a finished checkpoint keeps its bytes and its content digest.

A fit that starts fresh in a folder where an earlier run left checkpoints (a re-run with ``--ckpt_path null``, e.g.
the study retraining a stale step) first renames that folder ``checkpoints.1`` (``.2``, ...): Lightning would
otherwise write ``last-v1.ckpt`` beside the old ``last.ckpt``, and the configs downstream, which name
``checkpoints/last.ckpt``, would go on using the old model. So ``checkpoints/last.ckpt`` is always the newest run's
final checkpoint, ``--ckpt_path last`` finds only this run's, and nothing is deleted.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from ..io.atomic import keep_aside


def save_checkpoints_now(trainer: L.Trainer) -> list[str]:
    """Make every ModelCheckpoint save the current step (if it has not); returns the paths written."""
    written = []
    for cb in trainer.checkpoint_callbacks:
        if not isinstance(cb, ModelCheckpoint) or cb._should_skip_saving_checkpoint(trainer):
            continue
        candidates = cb._monitor_candidates(trainer)
        if cb.monitor is None and cb.save_top_k != 0:
            cb._save_topk_checkpoint(trainer, candidates)
        cb._save_last_checkpoint(trainer, candidates)
        if cb._last_global_step_saved == trainer.global_step:
            written.append(cb.last_model_path or cb.best_model_path)
    return written


def keep_earlier_checkpoints(trainer: L.Trainer) -> list[Path]:
    """Before a fresh fit: rename every checkpoint folder that holds ``.ckpt`` files to its first free numbered name
    (call on global rank 0 only, before training). Returns the new names."""
    kept = []
    for folder in {Path(cb.dirpath) for cb in trainer.checkpoint_callbacks
                   if isinstance(cb, ModelCheckpoint) and cb.dirpath is not None}:
        if folder.is_dir() and any(folder.glob("*.ckpt")):
            kept.append(keep_aside(folder))
            rank_zero_info(f"an earlier run's checkpoints were in {folder}; kept them as {kept[-1]}")
    return kept


class FinalCheckpoint(L.Callback):
    def __init__(self):
        self._start_step: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._start_step = trainer.global_step

    def _trained(self, trainer) -> bool:
        return self._start_step is not None and trainer.global_step > self._start_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps and self._trained(trainer):
            save_checkpoints_now(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._trained(trainer):
            save_checkpoints_now(trainer)
