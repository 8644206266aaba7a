"""Test-only callbacks: one SIGKILLs its own process right after the checkpoints of a given step are saved, one
sends it SIGTERM during the batch that makes a given step, one makes the checkpoints of a given step large (so
that a test can kill the process while they are being written).

``KillAfterCheckpoint`` is a ``Checkpoint`` so that Lightning orders it after the ModelCheckpoints listed before it:
its ``on_train_batch_end`` runs once they have written the step's files, and before Lightning logs that step's row."""

import os
import signal

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint


class KillAfterCheckpoint(Checkpoint):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class PadCheckpoint(L.Callback):
    """Adds ``megabytes`` of zeros to every checkpoint saved at ``step`` (a resume would ignore the extra key)."""

    def __init__(self, step: int, megabytes: int = 64):
        self.step, self.megabytes = step, megabytes

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.global_step == self.step:
            checkpoint["test_padding"] = torch.zeros(self.megabytes * 2**18)


class SignalDuringStep(L.Callback):
    """Sends SIGTERM (``signum``) to its own process as the batch that brings ``global_step`` to ``step`` starts;
    under DDP only on global rank ``rank`` (None: every rank)."""

    def __init__(self, step: int, signum: int = 15, rank: int | None = None):
        self.step, self.signum, self.rank = step, signum, rank

    def on_train_batch_start(self, trainer, *args, **kwargs) -> None:
        if trainer.global_step == self.step - 1 and self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), self.signum)
