"""SIGTERM / SIGINT stop ``fit``, ``validate``, ``test`` and ``predict`` at a safe point, with every file whole.

``install()`` (called by the command line) records the first SIGTERM or SIGINT instead of dying mid-write; a
second SIGINT interrupts at once. :class:`StopOnSignal` acts at the next batch end: in ``fit`` (one process) it
saves the checkpoints of that step (the state periodic checkpoints are taken in, so ``--ckpt_path last`` resumes
exactly) and lets Lightning stop; under DDP Lightning's own SIGTERM broadcast stops all ranks after the same batch
and the newest periodic checkpoint is the resume point. ``predict`` stops after the shard it is writing. The
command line then exits with ``128 + signal`` (143 for SIGTERM, 130 for SIGINT).
"""

from __future__ import annotations

import signal

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .final_checkpoint import save_checkpoints_now

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []


def received() -> int | None:
    """The first stop signal received since :func:`install`, or None."""
    return _received[0] if _received else None


def _record(signum, frame) -> None:
    if signum == signal.SIGINT and _received:
        raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
    _received.append(signum)


def install() -> dict:
    """Record SIGTERM/SIGINT from now on (main thread only); returns the previous handlers for :func:`restore`."""
    _received.clear()
    previous = {}
    for s in SIGNALS:
        try:
            previous[s] = signal.signal(s, _record)
        except ValueError:  # not the main thread
            pass
    return previous


def restore(previous: dict) -> None:
    for s, handler in previous.items():
        signal.signal(s, handler)


class StopOnSignal(L.Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.world_size == 1 and signal.getsignal(signal.SIGTERM) is not _record:
            # one process: ours alone, so that the stop comes after the checkpoint below (Lightning's handler would
            # stop after the batch even when the signal lands after this hook)
            try:
                signal.signal(signal.SIGTERM, _record)
            except ValueError:
                pass

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if received() is None:
            return
        if trainer.world_size == 1:
            save_checkpoints_now(trainer)
        trainer._signal_connector.received_sigterm = True  # Lightning stops after this batch (all ranks under DDP)

    def _stop(self, trainer, *_) -> None:
        if received() is not None:
            raise SIGTERMException(128 + received())

    on_predict_batch_end = on_test_batch_end = _stop

    def on_validation_batch_end(self, trainer, *args) -> None:
        if not trainer.training and trainer.state.fn != "fit":  # in fit, the next training batch end stops
            self._stop(trainer)
