"""Run ``cli.py`` as a real subprocess (for signals, exit codes and stderr), always with a timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import ROOT

TESTS = Path(__file__).resolve().parent


def cli_env(**extra: str) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), OMP_NUM_THREADS="1",
                LG_TEST_THREADS="1", **extra)


def cli_cmd(*args) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), *[str(a) for a in args]]


def run_cli(*args, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``env``: extra environment variables for the run."""
    return subprocess.run(cli_cmd(*args), cwd=ROOT, env=cli_env(**(env or {})), capture_output=True, text=True,
                          timeout=timeout, umask=0o022)


def start_cli(*args, log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cli_cmd(*args), cwd=ROOT, env=cli_env(**(env or {})), stdout=log.open("w"),
                            stderr=subprocess.STDOUT, umask=0o022)


def wait_until(condition, proc: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen, signum: int, timeout: float = 120) -> int:
    proc.send_signal(signum)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and ".tmp" in p.name]


def wrong_modes(root: Path, mode: int = 0o644) -> list[str]:
    return [f"{p}: {oct(p.stat().st_mode & 0o777)}" for p in root.rglob("*")
            if p.is_file() and (p.stat().st_mode & 0o777) != mode]


def running_with(text: str) -> list[int]:
    """The pids (other than this one) whose command line contains ``text`` (NUL-separated arguments), from /proc."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


__all__ = ["cli_cmd", "run_cli", "start_cli", "wait_until", "stop", "temp_files", "wrong_modes", "running_with",
           "signal"]

