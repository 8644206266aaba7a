"""What a run folder of steps records about its runs: ``run.json`` (each run's start, wall time, steps run, exit and
settings), the digest of its step markers, and the timing and commits a report of the run shows.

A run that ran steps (or was interrupted) appends its entry to ``run.json`` (:class:`RunAttempt`); a report rebuilt
without running a step shows that run's wall time and when it was rebuilt, never the rebuild's own few seconds.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import signal
import sys
import time
from pathlib import Path

from ..io.atomic import atomic_write_text
from .signals import on_signals
from .steps import DONE_STATES


def markers_digest(run_dir: Path, steps, sections: list[str]) -> str:
    """One digest of every step's marker (``steps/<step>.json``, or its absence) and of the sections reported."""
    h = hashlib.sha256()
    for name in sorted(steps):
        path = Path(run_dir) / "steps" / f"{name}.json"
        h.update(name.encode())
        h.update(path.read_bytes() if path.is_file() else b"-")
    h.update(json.dumps(sorted(sections)).encode())
    return h.hexdigest()


RUN_RECORD = "run.json"
RUN_SETTINGS = ("machine", "jobs", "threads_per_step")  # a run's, kept by a rebuilt report


def read_runs(run_dir: Path) -> list[dict]:
    """The runs recorded in ``run_dir/run.json`` (oldest first): each ``started_utc``, ``finished_utc``,
    ``wall_seconds``, ``steps_run``, ``exit`` and the ``RUN_SETTINGS``."""
    path = Path(run_dir) / RUN_RECORD
    return json.loads(path.read_text())["runs"] if path.is_file() else []


def record_run(run_dir: Path, run: dict) -> None:
    """Append ``run`` to ``run_dir/run.json`` (written whole, atomically)."""
    atomic_write_text(Path(run_dir) / RUN_RECORD, json.dumps({"runs": [*read_runs(run_dir), run]}, indent=2))


class RunAttempt:
    """This run of a folder's steps as far as it got (``phase``: planning, steps, report): its ``run.json`` entry and,
    when a signal stops it, the one line on stderr that names the phase and how to resume."""

    def __init__(self):
        self.phase, self.run_dir, self.runner, self.settings = "planning", None, None, {}
        self.locked = False  # the run folder is ours: run.json may be written
        self.started, self.t0 = dt.datetime.now(dt.timezone.utc), time.perf_counter()

    def record(self, exit_: str, run: dict | None = None, phase: str | None = None) -> None:
        """Append this run to ``run.json``: the start, wall time and settings of ``run`` (its report: what a rebuild of
        the report shows) or its own, the steps it ran, its exit and, if interrupted, in which phase (``phase`` or its
        own)."""
        run = run or {"started_utc": self.started.isoformat(timespec="seconds"),
                      "wall_seconds": round(time.perf_counter() - self.t0, 1), **self.settings}
        record_run(self.run_dir, {**{k: run[k] for k in ("started_utc", "wall_seconds", *RUN_SETTINGS) if k in run},
                                  "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                  "steps_run": len(self.runner.seconds) if self.runner is not None else 0,
                                  "exit": exit_, **({"interrupted_in": phase or self.phase}
                                                    if exit_ == "interrupted" else {})})

    def stop_line(self, signum: int) -> str:
        name, where = signal.Signals(signum).name, f" in {self.run_dir}" if self.run_dir else ""
        if self.phase == "planning":
            return f"stopped by {name} while planning the study{where}; no step ran. Re-run the same command to start"
        if self.phase == "steps":
            status = list(self.runner.status.values()) if self.runner is not None else []
            return (f"stopped by {name} while running the study's steps{where} ({status.count('interrupted')} "
                    f"interrupted, {sum(s.startswith('not run') for s in status)} not started); every file written is"
                    " whole. Re-run the same command to resume (finished steps are skipped)")
        return (f"stopped by {name} while writing the report{where}; every step's output is kept. Re-run the same "
                "command to write it (finished steps are skipped)")

    def stopped(self, signum: int) -> int:
        """Record the interrupted run (when its folder is locked) and say so in one line; ``128 + signal``."""
        on_signals(signal.SIG_IGN)  # the record is short: a second signal does not cut it
        if self.locked:
            self.record("interrupted")
        sys.stderr.write(self.stop_line(signum) + "\n")
        return 128 + signum


def timing(run_dir: Path, started_utc: str, wall: float, rebuilt: bool, previous: dict) -> dict:
    """The report's timing fields: this run's, or for a rebuild the recorded run's (the last run.json entry that ran a
    step, else the ``previous`` report's) with the rebuild's own time beside it. Attempts stopped before any step ran
    are recorded (``steps_run`` 0) but count as no run."""
    runs = read_runs(run_dir)
    ran = [r for r in runs if r.get("steps_run", 1)]  # not an attempt stopped before any step ran
    out: dict = {}
    if not rebuilt:
        out = {"started_utc": started_utc, "wall_seconds": round(wall, 1)}
    else:
        source = ran[-1] if ran else previous
        out = {"started_utc": source.get("started_utc"), "wall_seconds": source.get("wall_seconds")}
        for key in RUN_SETTINGS:  # where and how the run ran (not the rebuild): its record, else the report it wrote
            value = source.get(key, previous.get(key))
            if value is not None:
                out[key] = value
        out.update(rebuilt_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   rebuild_seconds=round(wall, 1))
    # a run is recorded after its report is written: for a run every entry is earlier, for a rebuild all but the last
    earlier = ran[:-1] if rebuilt else ran
    if earlier:
        out.update(earlier_runs=len(earlier),
                   earlier_runs_seconds=round(sum(r["wall_seconds"] for r in earlier), 1))
    return out


def attribute_steps(run_dir: Path, steps: dict[str, dict], previous: dict) -> None:
    """Set each finished step's ``commit`` and ``dirty``: those its marker recorded; for a marker from before markers
    recorded them, those the ``previous`` report gave that step, else that report's own (the run that wrote it)."""
    for name, entry in steps.items():
        marker_path = Path(run_dir) / "steps" / f"{name}.json"
        if entry["status"] not in DONE_STATES or not marker_path.is_file():
            continue
        marker = json.loads(marker_path.read_text())
        earlier = previous.get("steps", {}).get(name, {})
        source = marker if "commit" in marker else earlier if "commit" in earlier else previous
        entry["commit"] = source.get("commit") or "not recorded"
        entry["dirty"] = source.get("dirty")
