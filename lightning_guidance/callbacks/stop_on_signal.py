"""SIGTERM / SIGINT stop ``fit``, ``validate``, ``test`` and ``predict`` at a safe point, with every file whole.

``install()`` (called by the command line) records the first SIGTERM or SIGINT instead of dying mid-write; a
second SIGINT interrupts at once. The handler only sets that flag. :class:`StopOnSignal` acts at the next training
batch end, on every rank at once: the ranks agree on the flag with one collective (a max over ranks: a signal that
reached any rank stops all of them), all save the checkpoints of that step together (the state periodic checkpoints
are taken in, so ``--ckpt_path last`` resumes exactly, no step trained twice) and Lightning stops after the batch.
Lightning's own SIGTERM handler, which runs a collective inside the handler and kills the other ranks' processes,
is replaced by the flag on every rank once training starts. ``predict`` stops after the shard it is writing. The
command line then exits with ``128 + signal`` (143 for SIGTERM, 130 for SIGINT) on every rank.
"""

from __future__ import annotations

import signal

import lightning as L
import torch
import torch.distributed as dist
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


def _record_signals_here() -> None:
    """``_record`` as the handler of SIGTERM and SIGINT in this process (main thread only)."""
    for s in SIGNALS:
        if signal.getsignal(s) is not _record:
            try:
                signal.signal(s, _record)
            except ValueError:  # not the main thread
                pass


def agreed_signal(trainer) -> int | None:
    """The stop signal any rank received (one all-reduce over the ranks; 0 = none), or None. A rank that did not
    receive it records it, so that it exits with the same code."""
    mine = received() or 0
    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        flag = torch.tensor([mine], dtype=torch.int64, device=trainer.strategy.root_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        mine = int(flag.item())
    if mine and received() is None:
        _received.append(mine)
    return mine or None


class StopOnSignal(L.Callback):
    # Lightning registers its SIGTERM handler after the setup hooks: take SIGTERM back before the sanity check and
    # before training (ours alone, so that the stop comes after the checkpoint below on every rank)
    def on_sanity_check_start(self, trainer, pl_module) -> None:
        _record_signals_here()

    def on_train_start(self, trainer, pl_module) -> None:
        _record_signals_here()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if agreed_signal(trainer) is None:  # a collective: every rank calls it at every batch end
            return
        save_checkpoints_now(trainer)  # every rank: one checkpoint, written by rank 0
        trainer._signal_connector.received_sigterm = True  # Lightning stops after this batch, on every rank

    def _stop(self, trainer, *_) -> None:
        if received() is not None:
            raise SIGTERMException(128 + received())

    on_predict_batch_end = on_test_batch_end = _stop

    def on_validation_batch_end(self, trainer, *args) -> None:
        if not trainer.training and trainer.state.fn != "fit":  # in fit, the next training batch end stops
            self._stop(trainer)
