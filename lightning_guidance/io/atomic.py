"""Write-to-temp-then-rename, so that a killed job never leaves a half-written file under the final name.

The temp file sits next to the target as ``.<name>.<host>-<pid>.<random>.tmp<suffix>``: it is fsynced, given the
mode the umask gives (``mkstemp`` makes 0600, and a rename keeps the mode), renamed onto the target, and the folder
is fsynced so that the rename survives a crash. A writer killed with SIGKILL leaves its temp file behind;
:func:`remove_stale_temps` deletes those whose writer (same host, named pid) is gone, and nothing else.

A write that finds the disk full raises :class:`DiskFullError`, one line naming the file and the room it needs (the
temp file is removed; the target keeps its previous content).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
_TEMP = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp[^/]*$")


def umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it back is not thread safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - unreachable


class DiskFullError(OSError):
    """No room left for a write: names the file, the room it needs (when known) and the room there is."""

    def __init__(self, path: str | os.PathLike, needed: int | None = None):
        folder = Path(path).parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            free = _size(shutil.disk_usage(folder).free)
        except OSError:
            free = "unknown"
        need = f"{_size(needed)} free" if needed else "more room than that"
        super().__init__(errno.ENOSPC, f"disk full: writing {path} needs {need} in {folder} ({free} free now); make "
                                       "room there and re-run the same command to continue")
        self.filename = str(path)

    def __str__(self) -> str:
        return str(self.strerror)


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and not isinstance(err, DiskFullError) and err.errno in (errno.ENOSPC,
                                                                                            errno.EDQUOT)


def _finish(tmp: str, path: Path) -> None:
    os.chmod(tmp, 0o666 & ~umask())
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", size: int | None = None):
    """Yield a temp path in the target's folder; on success fsync it, set the umask's mode, rename it onto ``path``
    (``os.replace`` is atomic) and fsync the folder. On failure the temp file is removed; a full disk raises
    :class:`DiskFullError` (``size``: the bytes the file needs, for its message)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=f".tmp{suffix}",
                                   dir=path.parent)
    except OSError as err:
        if is_disk_full(err):
            raise DiskFullError(path, size) from None
        raise
    os.close(fd)
    try:
        yield Path(tmp)
        _finish(tmp, path)
    except OSError as err:
        if is_disk_full(err):
            os.unlink(tmp)  # first, so that the message tells the room there is without it
            raise DiskFullError(path, size) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` through a temp file in its folder (never the system temp folder); refused before
    any byte is written when the folder has less room than ``data`` needs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = len(data)
    if shutil.disk_usage(path.parent).free < size:
        raise DiskFullError(path, size)
    with atomic_path(path, size=size) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any], suffix: str = "") -> Path:
    """``write(tmp_path)`` then rename onto ``path``."""
    with atomic_path(path, suffix) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Delete the temp files that writers killed mid-write left in ``folder``: only names of the form written by
    :func:`atomic_path`, only from this host, only when that pid no longer runs. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*"):
        m = _TEMP.match(p.name)
        if m and p.is_file() and m["host"] == _HOST and not _pid_alive(int(m["pid"])):
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


def keep_aside(path: str | os.PathLike) -> Path:
    """Rename ``path`` (a file or a folder) to the first free numbered name beside it, ``metrics.csv`` ->
    ``metrics.1.csv`` (``.2``, ...), ``checkpoints`` -> ``checkpoints.1``, so that a new run can take the name
    without deleting what an earlier run wrote. Returns the new path."""
    path = Path(path)
    n = 1
    while (kept := path.with_name(f"{path.stem}.{n}{path.suffix}")).exists():
        n += 1
    os.rename(path, kept)
    fsync_dir(path.parent)
    return kept
