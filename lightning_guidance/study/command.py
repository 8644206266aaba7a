"""``cli.py study``: plan the chosen sections' steps, run them (:mod:`..launch.steps`, or as SLURM jobs:
:mod:`..launch.step_jobs`), then write the report (:mod:`.report`).

The exit code is 0 when every step and section finished, 1 when something failed (the report still names it), and
``128 + signal`` after SIGINT/SIGTERM, in any phase: planning, steps (they stop at a safe point and the report is
still written), report (it stops at once; each file keeps its old or its new content). One line on stderr names the
phase and how to resume, and ``run.json`` records the interrupted run. One study at a time holds a run folder
(:mod:`~..launch.run_lock`), and it first removes the temp files that killed writers left there.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict
from pathlib import Path

import yaml

from ..io.atomic import remove_stale_temps
from ..launch.arguments import without_options
from ..launch.provenance import commit, machine, publish
from ..launch.run_lock import RunFolderLock
from ..launch.run_record import RunAttempt
from ..launch.signals import Interrupted, on_signals, raise_interrupted, restore
from ..launch.slurm import require_sbatch
from ..launch.step_jobs import record_finished_jobs, show_status, submit_steps
from ..launch.steps import DONE_STATES, StepRunner, study_command
from ..launch.workers import pause_for_tests, serve
from .plan import configs_root
from .presets import PRESETS, get_preset
from .sections import KEYS, choose, plan_study

STUDY_KEYS = ("title", "name", "preset", "sections", "description", "jobs", "slurm")


def load_study_file(path: str | None) -> dict:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"study config not found: {p}")
    study = yaml.safe_load(p.read_text()) or {}
    if not isinstance(study, dict):
        raise ValueError(f"{p}: a study config is a mapping (title, name, preset, sections)")
    unknown = sorted(set(study) - set(STUDY_KEYS))
    if unknown:
        raise ValueError(f"{p}: unknown key {', '.join(unknown)}; a study config takes {', '.join(sorted(STUDY_KEYS))}")
    return study


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cli.py study", description="Run the study and write runs/<name>/report.md.")
    parser.add_argument("--config", help="study YAML (configs/digits/study.yaml): title, name, preset, sections; the "
                        "shipped step configs are read from the folder above its own")
    parser.add_argument("--preset", help=f"one of {', '.join(PRESETS)} (overrides the config's)")
    parser.add_argument("--sections", nargs="+", help=f"run only these sections: {', '.join(KEYS)}")
    parser.add_argument("--name", help="run folder runs/<name> (default: study-<preset>)")
    parser.add_argument("--jobs", type=int, help="steps run at once (default: 2, or 1 with one CPU)")
    parser.add_argument("--threads", type=int, help="CPU threads per step: the preset's (threads_per_step); training "
                        "differs with the thread count, so another count is refused unless --allow-other-threads")
    parser.add_argument("--allow-other-threads", action="store_true", help="run with --threads other than the "
                        "preset's; the report's header names it as a different run (its numbers are another draw)")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local",
                        help="local: run the steps here; slurm: submit each step as a job, chained by what it reads, "
                        "and a last job that writes the report (resources: the preset's, then the config's slurm:)")
    parser.add_argument("--status", action="store_true", help="with --launcher slurm: show the chain's jobs")
    parser.add_argument("--runs-root", default="runs", help="parent folder of the run folder")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # tests: no interpreter start-up
    # a step worker of the run in this folder (launch/workers.py): started by the engine, reads steps from stdin
    parser.add_argument("--serve-steps", metavar="RUN_FOLDER", help=argparse.SUPPRESS)
    parser.add_argument("--list", action="store_true", help="print the sections and their planned steps and exit")
    parser.add_argument("--report-only", action="store_true", help="run no step: write the report from what the "
                        "steps wrote (a step counts as done when its output exists)")
    parser.add_argument("--publish", help="also copy the report (md, json, figures, step configs) into this folder, "
                        "e.g. docs/results/small")
    return parser


def check_threads(preset, threads: int | None, allowed: bool) -> int:
    """The torch threads of each step: the preset's ``threads_per_step``. Training gives other weights at another
    thread count (docs/results/README.md, "Thread count"), so a run at another count is another draw of the
    experiment: refused in one line unless ``allowed`` (then the report's header names it)."""
    if threads is None or threads == preset.threads_per_step:
        return preset.threads_per_step
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    if not allowed:
        raise ValueError(f"--threads {threads}: the {preset.name} preset runs {preset.threads_per_step} thread(s) per "
                         "step, and training differs with the thread count; --jobs sets how many steps run side by "
                         "side. Add --allow-other-threads to make a different run (its report says so)")
    return threads


def main(argv: list[str] | None = None, run_in_process=None) -> int:
    """``cli.py study``; ``run_in_process`` (the CLI's own entry, passed down by it) serves ``--in-process`` and the
    step workers."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = make_parser().parse_args(argv)
    if (ns.serve_steps or ns.in_process) and run_in_process is None:
        raise ValueError("--serve-steps and --in-process need the CLI's entry point: run them as `cli.py study`")
    if ns.serve_steps:
        return serve(run_in_process, ns.threads)
    attempt = RunAttempt()
    previous = on_signals(raise_interrupted)
    try:
        return _study(ns, argv, run_in_process, attempt)
    except Interrupted as stop:  # before the run folder was locked: nothing to record
        return attempt.stopped(stop.signum)
    finally:
        restore(previous)


def _study(ns, argv, run_in_process, attempt: RunAttempt) -> int:
    if ns.launcher == "slurm":
        require_sbatch()  # says what is missing before anything runs
    elif ns.status:
        raise ValueError("--status shows a SLURM chain: add --launcher slurm")
    study = load_study_file(ns.config)
    preset = get_preset(ns.preset or study.get("preset", "tiny"))
    sections = choose(ns.sections or study.get("sections"))
    threads = check_threads(preset, ns.threads, ns.allow_other_threads or ns.report_only)
    missing = preset.missing_data()
    if missing:
        raise FileNotFoundError(f"the {preset.name} preset reads {', '.join(missing)}, which "
                                f"{'is' if len(missing) == 1 else 'are'} not on disk: put the dataset there "
                                "(see data/README.md) or choose --preset small")
    name = (ns.name or study.get("name") or f"study-{preset.name}").replace("{preset}", preset.name)
    run_dir = Path(ns.runs_root) / name
    plan = plan_study(preset, run_dir, configs_root(ns.config), sections)
    if ns.list:
        for s in plan.sections:
            print(f"{s.key}: {s.title}\n    data: {s.data}\n    preset: {', '.join(s.preset_fields)}")
        for step in plan.steps.values():
            print(f"{step.section:22s} {step.name:40s} {step.command:8s} {' + '.join(step.configs)}")
        return 0
    with RunFolderLock(run_dir, say=lambda line: print(line, file=sys.stderr)) as lock:
        attempt.run_dir, attempt.locked = run_dir, True
        try:
            remove_stale_temps(run_dir)  # what writers killed mid-write left (their pid is gone), nothing else
            pause_for_tests("planning")
            return _locked(ns, argv, run_in_process, attempt, study, sections, threads, plan, lock.fd)
        except Interrupted as stop:
            return attempt.stopped(stop.signum)
        finally:
            attempt.locked = False


def _locked(ns, argv, run_in_process, attempt, study, sections, threads, plan, lock_fd) -> int:
    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)  # the report's own scoring, too
    if ns.launcher == "slurm" and not ns.report_only:
        preset, run_dir = plan.preset, plan.root
        if ns.status:
            return show_status(run_dir)
        print(f"study preset {preset.name} ({preset.summary}); {len(plan.steps)} steps as SLURM jobs; folder {run_dir}")
        report_cmd = study_command(*without_options(argv, ("--launcher",), ("--status",)), "--report-only")
        submit_steps(StepRunner(run_dir, plan.steps, code=commit()), preset.slurm, study.get("slurm"), report_cmd)
        return 0
    try:
        return _run(ns, study, sections, plan, threads, run_in_process if ns.in_process else None, attempt, lock_fd)
    finally:
        torch.set_num_threads(threads_before)  # in-process callers (tests) get their setting back


def _run(ns, study, sections, plan, threads, run_in_process, attempt, lock_fd) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from .report import write_report

    preset, run_dir = plan.preset, plan.root
    jobs = ns.jobs or study.get("jobs") or (2 if (os.cpu_count() or 1) > 1 else 1)
    console = Console(stderr=False)
    console.print(f"[bold]study[/bold] preset {preset.name} ({preset.summary}); {len(plan.steps)} steps, "
                  f"{jobs} at a time, {threads} thread(s) each; folder {run_dir}")
    code = commit()
    runner = attempt.runner = StepRunner(run_dir, plan.steps, jobs=jobs, in_process=run_in_process, console=console,
                                         threads=threads, code=code, keep_fds=(lock_fd,) if lock_fd else ())
    attempt.settings = {"machine": machine(), "jobs": jobs, "threads_per_step": threads}
    if ns.report_only:
        if (run_dir / "slurm").is_dir():  # steps that SLURM jobs finished: recorded as the local runner would
            record_finished_jobs(runner, preset.slurm, study.get("slurm"))
        status = runner.adopt_products()
        ran = False
    else:
        attempt.phase = "steps"
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=False) as progress:
            runner.console = progress.console
            status = runner.run(progress)
        ran = bool(runner.seconds)  # at least one step was started (not only skipped)
        if runner.interrupted is not None:
            sys.stderr.write(attempt.stop_line(runner.interrupted) + "\n")  # the report follows
    attempt.phase = "report"
    pause_for_tests("report")  # tests: a signal while the report is written
    meta = {"title": study.get("title", "lightning-guidance study"), "description": study.get("description", ""),
            "preset": asdict(preset), "sections_requested": sections, **attempt.settings, **code,
            "started_utc": attempt.started.isoformat(timespec="seconds"),
            "steps": {n: {"section": s.section, "command": s.command, "status": status.get(n, "not run"),
                          "seconds": round(runner.seconds.get(n, 0.0), 1), "config": f"configs/{n}.yaml"}
                      for n, s in plan.steps.items()}}
    report = write_report(plan, status, meta, sections, attempt.t0, console, rebuilt=not ran)
    failed = [n for n, s in status.items() if s not in DONE_STATES]
    if runner.interrupted is not None:  # the report's wall time: what a later rebuild of it shows as the run's
        attempt.record("interrupted", report, phase="steps")
    elif ran:
        attempt.record("failed" if failed else "ok", report)
    if ns.publish:
        console.print(f"published: {publish(run_dir, Path(ns.publish))}")
    failed_sections = [k for k, v in report["sections"].items() if v["status"] == "failed"]
    console.print(f"report: {run_dir / 'report.md'}")
    if runner.interrupted is not None:  # said on stderr as the steps stopped
        return 128 + runner.interrupted
    if failed or failed_sections:
        console.print(f"[red]failed steps: {', '.join(failed) or 'none'}; failed sections: "
                      f"{', '.join(failed_sections) or 'none'}")
        return 1
    return 0
