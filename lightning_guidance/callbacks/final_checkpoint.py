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

Whatever the config's ``ModelCheckpoint`` says, a fit writes ``checkpoints/last.ckpt``, and only one callback writes
it (:func:`one_last_checkpoint`): a config without ``save_last`` (or without any ``ModelCheckpoint``) gets it, and a
user's own ``ModelCheckpoint`` beside the config's writes neither ``last-v1.ckpt`` nor ``epoch=...-v1.ckpt``.
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


def one_last_checkpoint(trainer: L.Trainer, folder: str) -> None:
    """Make exactly one ModelCheckpoint write ``<folder>/last.ckpt`` (the first that has ``save_last``, else the
    first in ``folder``, else a new one), and none in ``folder`` version its names (two callbacks that save the same
    step under the same name write one file, not ``-v1``). Nothing when checkpointing is off
    (``enable_checkpointing: false``)."""
    if not trainer.checkpoint_callbacks:
        return
    ours = [cb for cb in trainer.checkpoint_callbacks
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is not None and Path(cb.dirpath) == Path(folder)]
    if not ours:
        ours = [ModelCheckpoint(dirpath=folder, save_top_k=0, every_n_epochs=0)]  # only last.ckpt, at the end
        trainer.callbacks.append(ours[0])
    writer = next((cb for cb in ours if cb.save_last), ours[0])
    for cb in ours:
        cb.save_last = True if cb is writer else False
        cb._enable_version_counter = False


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
