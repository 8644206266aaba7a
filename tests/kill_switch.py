"""A test-only callback that SIGKILLs its own process right after the checkpoints of a given step are saved.

It is a ``Checkpoint`` so that Lightning orders it after the ModelCheckpoints listed before it: its
``on_train_batch_end`` runs once they have written the step's files, and before Lightning logs that step's row."""

import os
import signal

from lightning.pytorch.callbacks import Checkpoint


class KillAfterCheckpoint(Checkpoint):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
