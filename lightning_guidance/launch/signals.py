"""SIGTERM and SIGINT while a command runs: handled by a callback, or raised as :class:`Interrupted` to unwind the
phase it stops; installed from the main thread only (Python delivers signals there) and restored after."""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """SIGTERM/SIGINT, raised where the process was: a file being written keeps its old content and its temp file is
    removed. Not an ``Exception``: an ``except Exception`` on the way does not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def raise_interrupted(signum, frame) -> None:
    """A signal handler that raises :class:`Interrupted`."""
    raise Interrupted(signum)


def on_signals(handler) -> dict:
    """Install ``handler`` (a callable, or ``signal.SIG_IGN``) for SIGTERM and SIGINT in the main thread; the previous
    handlers (none from another thread), for :func:`restore`."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, handler) for s in STOP_SIGNALS}


def restore(previous: dict) -> None:
    """Put back the handlers :func:`on_signals` replaced."""
    for s, handler in previous.items():
        signal.signal(s, handler)
