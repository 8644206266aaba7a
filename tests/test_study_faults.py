"""``cli.py study`` under signals and kills, run as a real process on the micro preset: SIGTERM/SIGINT in any phase
(planning, steps, report) end with one line on stderr and ``128 + signal``, ``run.json`` records the interruption and
nothing written earlier is lost; a SIGKILL of the study takes its step worker down with it; one study at a time holds
a run folder (a second is refused in one line, a killed one's lock is taken over); temp files that killed writers
left in the run folder are removed, and only those.

``LG_STUDY_PAUSE=<phase>:<seconds>`` (``launch/workers.pause_for_tests``) holds the study, or its worker before a
step, at the start of that phase, after a line on stderr that the test waits for; nothing else changes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT
from subprocess_cli import cli_cmd, cli_env, running_with, temp_files, wait_until

from lightning_guidance.io.atomic import atomic_path

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals, /proc and flock: Linux")

MICRO = ("study", "--preset", "micro", "--sections", "toy1d", "--jobs", "1", "--threads", "1")


def start(run: Path, *extra, pause: str | None = None) -> tuple[subprocess.Popen, Path, Path]:
    """``cli.py study`` on the micro preset's toy1d section into ``run``; its stdout and stderr files."""
    out, err = run.parent / f"{run.name}.out", run.parent / f"{run.name}.err"
    env = cli_env(**({"LG_STUDY_PAUSE": pause} if pause else {}))
    proc = subprocess.Popen(cli_cmd(*MICRO, "--runs-root", run.parent, "--name", run.name, *extra), cwd=ROOT, env=env,
                            stdout=out.open("w"), stderr=err.open("w"), umask=0o022)
    return proc, out, err


def finish(proc: subprocess.Popen, timeout: float = 120) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def runs(run: Path) -> list[dict]:
    return json.loads((run / "run.json").read_text())["runs"]


def stop_lines(err: Path) -> list[str]:
    """stderr less the test hook's own line."""
    return [line for line in err.read_text().splitlines() if not line.startswith("paused in ")]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("phase, signum, words", [
    pytest.param("planning", signal.SIGINT, "while planning the study", id="planning-SIGINT"),
    pytest.param("report", signal.SIGTERM, "while writing the report", id="report-SIGTERM"),
    pytest.param("report", signal.SIGINT, "while writing the report", id="report-SIGINT"),
])
def test_a_signal_while_planning_or_writing_the_report_is_one_line_and_recorded(tmp_path, phase, signum, words):
    """Bug caught: SIGTERM while the report is written killed the study with no message and no run.json, SIGINT gave a
    traceback. The earlier report stays whole (its files are not touched), and no temp file is left."""
    run = tmp_path / "run"
    proc, _, err = start(run, "--report-only")
    assert finish(proc) == 1  # no step ran: every section fails, and the report says so
    before = {p.name: p.read_bytes() for p in (run / "report.md", run / "report.json")}

    proc, _, err = start(run, "--report-only", pause=f"{phase}:60")
    wait_until(lambda: f"paused in {phase}" in err.read_text(), proc, 120, f"the {phase} phase", err)
    os.kill(proc.pid, signum)
    assert finish(proc) == 128 + signum, err.read_text()
    lines = stop_lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"stopped by {signum.name} {words} in {run}"), lines
    assert "Re-run the same command" in lines[0]
    assert runs(run)[-1]["exit"] == "interrupted" and runs(run)[-1]["interrupted_in"] == phase
    assert {p.name: p.read_bytes() for p in (run / "report.md", run / "report.json")} == before
    assert not temp_files(run) and not (run / "study.lock").exists()


@pytest.mark.timeout(300)
def test_sigterm_while_a_step_runs_is_one_line_and_recorded(tmp_path):
    """The step's worker is held before its step; SIGTERM to the study stops it there, the report is still written,
    run.json records the interrupted run, and no worker outlives the study."""
    run = tmp_path / "run"
    proc, _, err = start(run, pause="step:60")
    wait_until(lambda: "paused in step" in _read(run / "logs" / "worker-1.log"), proc, 180, "a step", err)
    os.kill(proc.pid, signal.SIGTERM)
    assert finish(proc) == 128 + signal.SIGTERM, err.read_text()
    lines = stop_lines(err)
    assert len(lines) == 1 and re.match(re.escape(f"stopped by SIGTERM while running the study's steps in {run} ")
                                        + r"\(1 interrupted, [1-9]\d* not started\)", lines[0]), lines
    record = runs(run)[-1]
    assert record["exit"] == "interrupted" and record["interrupted_in"] == "steps" and record["steps_run"] == 1
    assert (run / "report.md").is_file()
    assert not running_with(f"--serve-steps\0{run}"), "a worker outlived the study"


@pytest.mark.timeout(300)
def test_a_sigkilled_study_takes_its_worker_down(tmp_path):
    """Bug caught: after a SIGKILL of the study its worker went on (a long step to its end) and raced a re-run. The
    worker gets SIGTERM when the study dies and is gone within seconds; a re-run then takes the dead study's lock over
    with a one-line notice."""
    run = tmp_path / "run"
    proc, _, err = start(run, pause="step:120")
    wait_until(lambda: "paused in step" in _read(run / "logs" / "worker-1.log"), proc, 180, "a step", err)
    workers = running_with(f"--serve-steps\0{run}")
    assert len(workers) == 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while running_with(f"--serve-steps\0{run}") and time.monotonic() < deadline:
        time.sleep(0.1)
    left = running_with(f"--serve-steps\0{run}")
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "the step worker outlived the SIGKILLed study"

    again, _, err = start(run, "--report-only")
    assert finish(again) == 1, err.read_text()  # no step ran: every section fails
    assert stop_lines(err) == [f"took over {run / 'study.lock'}: its study (pid {proc.pid} on {socket.gethostname()})"
                               " no longer runs"]
    assert not (run / "study.lock").exists()


@pytest.mark.timeout(300)
def test_a_second_study_in_the_same_folder_is_refused_in_one_line(tmp_path):
    run = tmp_path / "run"
    first, _, first_err = start(run, "--report-only", pause="planning:60")
    wait_until(lambda: "paused in planning" in first_err.read_text(), first, 120, "the first study", first_err)
    try:
        second = subprocess.run(cli_cmd(*MICRO, "--runs-root", tmp_path, "--name", "run", "--report-only"), cwd=ROOT,
                                env=cli_env(), capture_output=True, text=True, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGTERM)
        finish(first)
    assert second.returncode == 1
    assert second.stderr.splitlines() == [f"error: another study (pid {first.pid} on {socket.gethostname()}) is "
                                          f"running in {run}; wait for it or stop it"]
    assert not (run / "report.md").exists()  # the second wrote nothing


def test_a_killed_writers_temp_files_are_removed_at_start_and_nothing_else(tmp_path):
    """Bug caught: a figure write killed mid-way left ``figures/.<name>.png...tmp`` (mode 0600) for good: the study
    never cleaned its run folder. Only the package's temp names, from this host, whose writer is gone, are removed."""
    run = tmp_path / "run"
    figures = run / "figures"
    figures.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())  # as io/atomic.py names its temp files
    stale = figures / f".toy1d.png.{host}-{dead.pid}.k2j4x9.tmp.png"
    live = figures / f".toy1d.png.{host}-{os.getpid()}.a8b7c6.tmp.png"  # a writer still running (this test)
    mine = [figures / ".notes.tmp", run / "draft.tmp.png"]  # the user's own
    for path in (stale, live, *mine):
        path.write_bytes(b"partial")
    stale.chmod(0o600)
    result = subprocess.run(cli_cmd(*MICRO, "--runs-root", tmp_path, "--name", "run", "--report-only"), cwd=ROOT,
                            env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr  # no step ran: every section fails
    assert not stale.exists()
    assert live.exists() and all(p.read_bytes() == b"partial" for p in mine)


def test_a_temp_file_is_group_readable_while_it_is_written(tmp_path):
    """A writer killed mid-write leaves its temp file with the mode the final file would have, not mkstemp's 0600."""
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "figure.png", suffix=".png") as tmp:
            assert tmp.stat().st_mode & 0o777 == 0o644
            tmp.write_bytes(b"png")
    finally:
        os.umask(old)
    assert (tmp_path / "figure.png").stat().st_mode & 0o777 == 0o644


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def test_sigterm_during_start_up_is_one_line_and_exit_143(tmp_path):
    """SIGTERM while ``cli.py study`` is still importing torch: one line and 143, not a silent death by signal."""
    run = tmp_path / "run"
    proc, _, err = start(run, "--report-only")
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 120
    while "libtorch" not in maps.read_text():  # torch's libraries are being loaded: mid-import
        assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGTERM)
    assert finish(proc) == 128 + signal.SIGTERM, err.read_text()
    lines = stop_lines(err)
    assert len(lines) == 1 and lines[0].startswith("stopped by SIGTERM "), lines
