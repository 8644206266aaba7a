"""One study at a time per run folder: ``<run folder>/study.lock``, held with ``fcntl.flock`` for the run's life.

The file holds the holder's pid and host (for the message that refuses a second study). The kernel releases a
``flock`` when every descriptor of it is closed, so a study killed by SIGKILL leaves no lock held, only the file: the
next study takes it over with a one-line notice. The study's step workers inherit the descriptor
(:class:`~.workers.WorkerPool`), so the folder stays locked until the last of them has exited too. Where ``fcntl``
is missing (Windows) the folder is not locked.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from .config_errors import UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

LOCK_NAME = "study.lock"


class RunFolderBusy(UsageError):
    """Another study holds the run folder."""


def _holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class RunFolderLock:
    """``with RunFolderLock(folder, say):`` holds the folder or raises :class:`RunFolderBusy` (one line); ``fd`` is the
    descriptor to hand to child processes that must keep the folder locked while they live."""

    def __init__(self, folder: str | os.PathLike, say=print):
        self.path, self.say = Path(folder) / LOCK_NAME, say
        self.fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held = _holder(fd)
                os.close(fd)
                pid, host = held.get("pid", "?"), held.get("host", "?")
                what = "ended, but its step workers still run," if host == socket.gethostname() and \
                    isinstance(pid, int) and not _alive(pid) else "is running"
                raise RunFolderBusy(f"another study (pid {pid} on {host}) {what} in {self.path.parent}; wait for it "
                                    "or stop it") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else the holder removed the file as we opened it: take the new one
                break
            os.close(fd)
        earlier = _holder(fd)
        if earlier:  # written by a study that ended without releasing it (killed)
            self.say(f"took over {self.path}: its study (pid {earlier.get('pid', '?')} on {earlier.get('host', '?')})"
                     " no longer runs")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)  # our workers may still hold it until they exit
        self.fd = None

    def __enter__(self) -> RunFolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
