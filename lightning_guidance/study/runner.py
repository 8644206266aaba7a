"""The study runner: plan the steps of the chosen sections, run each as a ``cli.py`` call, then write the report.

- Each step is the CLI's own entry on the step's config, run in one of ``--jobs`` long-lived worker processes
  (:mod:`.worker`) that import Lightning once; a worker puts the process-wide state back before each step and
  sends the step's output to ``logs/<step>.log``.

- A step is skipped when its marker (``runs/<name>/steps/<step>.json``) records the same config and the same content
  digests of its inputs and product; a step whose config or inputs changed is re-run, and its old folder is renamed
  ``<folder>.stale-<UTC time>`` first (nothing is deleted); steps downstream of it then see a new input digest.
- ``fit`` steps pass ``--ckpt_path last`` (a killed training resumes), ``predict`` skips shards already written.
- Independent steps run ``--jobs`` at a time (one per worker); SIGINT/SIGTERM are forwarded to the workers running a
  step, which stops at a safe point and is marked interrupted; the report is still written and the exit code is
  128 + the signal.
- A failed step is marked failed, the steps that need it are marked blocked, every other step still runs; a section
  whose inputs failed is marked failed in the report (naming the step). Exit code 1 when anything failed.
- ``--launcher slurm`` submits the same steps as SLURM jobs instead (:mod:`.slurm`); ``--status`` shows them.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from ..io.atomic import atomic_write_text
from ..launch.arguments import config_files
from .plan import DONE_STATES, Plan, Step, step_config
from .presets import PRESETS, Preset, get_preset
from .worker import ProcessState, WorkerPool, run_step

SECTIONS = ("toy1d", "fractal_panels", "fractal_benchmark", "digits_cfg", "digits_cg", "digits_calibration",
            "digits_postprocessor", "ece_vs_fd", "quality_vs_scale")


# ---- digests and markers -----------------------------------------------------------------------------------------
def file_digest(path: str | Path) -> str | None:
    p = Path(path)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Context:
    """What sections see: the preset, the run folder, every planned step and how it ended."""

    def __init__(self, preset: Preset, run_dir: Path, steps: dict[str, Step], status: dict[str, str],
                 sections: set[str]):
        self.preset, self.run_dir, self.steps, self.status, self.sections = preset, run_dir, steps, status, sections

    def ok(self, name: str) -> bool:
        return self.status.get(name) in DONE_STATES

    def step(self, name: str) -> Step:
        if not self.ok(name):
            raise LookupError(f"input step {name} {self.status.get(name, 'did not run')}")
        return self.steps[name]

    def config_path(self, step: Step) -> Path:
        return self.run_dir / "configs" / f"{step.name}.yaml"

    def config(self, step: Step) -> dict:
        return yaml.safe_load(self.config_path(step).read_text())

    def config_value(self, step: Step, dotted: str):
        node = self.config(step)
        for part in dotted.split("."):
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    def failed_inputs(self, names: list[str]) -> str:
        bad = [f"{n} {self.status.get(n, 'not planned')}" for n in names if not self.ok(n)]
        return "inputs failed: " + ", ".join(bad) if bad else "no inputs"


# ---- planning ----------------------------------------------------------------------------------------------------
def build_plan(preset: Preset, run_dir: Path, sections: list[str]) -> tuple[Plan, dict]:
    from .digits import plan_digits
    from .fractal import plan_fractal
    from .toy1d import plan_toy1d

    chosen = set(sections)
    if "quality_vs_scale" in chosen:  # its figures draw on the sampled sections
        chosen |= {"toy1d", "fractal_benchmark", "digits_cfg", "digits_cg", "digits_calibration"}
    plan = Plan(preset, run_dir)
    if "toy1d" in chosen:
        plan_toy1d(plan)
    if chosen & {"fractal_panels", "fractal_benchmark"}:
        plan_fractal(plan)
    runs = {}
    if chosen & {"digits_cfg", "digits_cg", "digits_calibration", "digits_postprocessor", "ece_vs_fd"}:
        runs = plan_digits(plan, chosen)
    return plan, {"sections": chosen, "digits_runs": runs}


def parse_sections(value: list[str] | None) -> list[str]:
    if not value:
        return list(SECTIONS)
    unknown = [s for s in value if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return [s for s in SECTIONS if s in value]


# ---- running steps -----------------------------------------------------------------------------------------------
class StepRunner:
    def __init__(self, run_dir: Path, steps: dict[str, Step], jobs: int = 1, in_process=None, console=None,
                 threads: int | None = None):
        self.run_dir, self.steps = run_dir, steps
        self.jobs = 1 if in_process else max(1, jobs)
        self.in_process = in_process
        self.threads = threads
        self.status: dict[str, str] = {}
        self.seconds: dict[str, float] = {}
        self.console = console
        self.interrupted: int | None = None
        self.pool: WorkerPool | None = None  # started by run()
        self._state: ProcessState | None = None  # --in-process: the state each step starts from
        self.code = commit()  # recorded in each marker: which code produced the step's product

    # -- markers
    def marker_path(self, step: Step) -> Path:
        return self.run_dir / "steps" / f"{step.name}.json"

    def identity(self, step: Step, config_text: str) -> dict:
        return {"config_sha256": text_digest(config_text),
                "inputs": {self.steps[n].product: file_digest(self.steps[n].product) for n in step.needs}}

    def is_current(self, step: Step, ident: dict) -> tuple[bool, bool]:
        """(finished and still valid, a marker exists but is stale)."""
        path = self.marker_path(step)
        if not path.is_file():
            return False, False
        marker = json.loads(path.read_text())
        same = (marker.get("config_sha256") == ident["config_sha256"] and marker.get("inputs") == ident["inputs"]
                and marker.get("product_sha256") is not None
                and marker.get("product_sha256") == file_digest(step.product))
        return same, not same

    def home(self, step: Step) -> Path | None:
        """The folder a step owns (moved aside when it is stale); a test step shares its sample step's folder."""
        if step.command == "fit":
            return Path(step.edits["trainer.default_root_dir"])
        if step.command == "predict":
            return step.out_dir
        return None

    def move_aside(self, step: Step) -> None:
        home = self.home(step)
        if home is not None and home.exists():
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
            target = home.with_name(f"{home.name}.stale-{stamp}")
            home.rename(target)
            self.say(f"  {step.name}: config or inputs changed; kept the old outputs as {target}")

    # -- output
    def say(self, text: str) -> None:
        (self.console.print if self.console is not None else print)(text)

    # -- execution
    def command(self, step: Step, config_path: Path) -> list[str]:
        args = [step.command, "--config", str(config_path)]
        if step.resume:
            args += ["--ckpt_path", "last"]
        return args

    def launch(self, step: Step, config_path: Path) -> int:
        """Run one step (in a worker, or here with ``--in-process``); its exit code."""
        log = self.run_dir / "logs" / f"{step.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        args = self.command(step, config_path)
        if self.in_process:
            return run_step(self.in_process, args, log, self._state)
        return self.pool.run(args, log)

    def start_pool(self) -> WorkerPool:
        """``jobs`` workers (started as steps need them), each ``cli.py study --serve-steps`` with ``threads``."""
        env = dict(os.environ)
        command = [sys.executable, "-m", "lightning_guidance.cli", "study", "--serve-steps", str(self.run_dir)]
        if self.threads:  # steps running side by side on a CPU: no more threads than cores
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
            command += ["--threads", str(self.threads)]
        return WorkerPool(self.jobs, command, env, self.run_dir / "logs")

    def forward(self, signum: int, _frame=None) -> None:
        self.interrupted = signum
        if self.pool is not None:
            self.pool.signal(signum)

    def write_config(self, step: Step) -> tuple[Path, str]:
        """Write the step's config to ``configs/<step>.yaml`` (unless it holds that already); its path and text."""
        text = yaml.safe_dump(step_config(step), sort_keys=False)
        path = self.run_dir / "configs" / f"{step.name}.yaml"
        if not path.is_file() or path.read_text() != text:
            atomic_write_text(path, text)
        return path, text

    def prepare(self, step: Step) -> tuple[Path, dict] | None:
        """Write the step's config; return it and its identity, or None when the step is finished and current."""
        path, text = self.write_config(step)
        ident = self.identity(step, text)
        current, stale = self.is_current(step, ident)
        if current:
            return None
        if stale:
            self.move_aside(step)
        return path, ident

    def finish(self, step: Step, ident: dict, rc: int, seconds: float) -> None:
        self.seconds[step.name] = seconds
        finished = rc == 0 and Path(step.product).is_file()
        if self.interrupted is not None and not finished:  # Lightning may exit 0 on SIGTERM without its product
            self.status[step.name] = "interrupted"
        elif finished:
            self.status[step.name] = "done"
            marker = {**ident, "product": step.product, "product_sha256": file_digest(step.product),
                      "seconds": round(seconds, 1), "finished": dt.datetime.now(dt.timezone.utc).isoformat(),
                      **self.code}
            atomic_write_text(self.marker_path(step), json.dumps(marker, indent=2))
        else:
            self.status[step.name] = "failed"
            if rc == 0:
                self.say(f"  {step.name}: exited 0 but did not write {step.product}")

    def run(self, progress=None) -> dict[str, str]:
        order = list(self.steps)
        task = progress.add_task("steps", total=len(order)) if progress is not None else None
        pending, running = list(order), {}
        old = {s: signal.signal(s, self.forward) for s in (signal.SIGINT, signal.SIGTERM)} \
            if threading.current_thread() is threading.main_thread() else {}
        if self.in_process:
            self._state = ProcessState(self.threads)
        else:
            self.pool = self.start_pool()
        try:
            with cf.ThreadPoolExecutor(max_workers=self.jobs) as pool:
                while pending or running:
                    for name in list(pending):
                        if len(running) >= self.jobs or self.interrupted is not None:
                            break
                        step = self.steps[name]
                        needs = [self.status.get(n) for n in step.needs]
                        if any(s in ("failed", "blocked", "interrupted") for s in needs):
                            self.status[name] = "blocked"
                            pending.remove(name)
                            self.say(f"[yellow]⊘ {step.section}: {name} blocked (an input step failed)")
                            self._advance(progress, task)
                            continue
                        if not all(s in DONE_STATES for s in needs):
                            continue
                        pending.remove(name)
                        try:
                            prepared = self.prepare(step)
                        except Exception as err:  # noqa: BLE001 - a bad config fails its step only
                            self.status[name] = "failed"
                            self.say(f"[red]✗ {step.section}: {name} failed before starting: {err}")
                            self._advance(progress, task)
                            continue
                        if prepared is None:
                            self.status[name] = "skipped"
                            self.say(f"[dim]↷ {step.section}: {name} finished earlier, still valid")
                            self._advance(progress, task)
                            continue
                        path, ident = prepared
                        if self.in_process:  # Lightning in the main thread, one step at a time
                            start = time.perf_counter()
                            rc = self.launch(step, path)
                            self._done(step, ident, rc, time.perf_counter() - start, progress, task)
                            continue
                        running[name] = (pool.submit(self._timed, step, path), ident)
                        if progress is not None:
                            progress.update(task, description=f"steps (running: {', '.join(running)})")
                    if self.interrupted is not None and not running:
                        for name in pending:
                            self.status[name] = "not run (interrupted)"
                        break
                    if not running:
                        if pending and not any(all(self.status.get(n) in DONE_STATES for n in self.steps[p].needs)
                                               for p in pending):
                            raise RuntimeError(f"study plan cannot proceed: {pending}")  # a planning bug
                        continue
                    done, _ = cf.wait([f for f, _ in running.values()], timeout=0.5,
                                      return_when=cf.FIRST_COMPLETED)
                    for name in [n for n, (f, _) in running.items() if f in done]:
                        fut, ident = running.pop(name)
                        rc, seconds = fut.result()
                        self._done(self.steps[name], ident, rc, seconds, progress, task)
        finally:
            if self.pool is not None:
                self.pool.close()
                self.pool = None
            if self._state is not None:
                self._state.restore()  # the caller's process as it was
            for s, h in old.items():
                signal.signal(s, h)
        return self.status

    def _timed(self, step: Step, path: Path) -> tuple[int, float]:
        start = time.perf_counter()
        try:
            rc = self.launch(step, path)
        except Exception as err:  # noqa: BLE001
            self.say(f"[red]  {step.name}: {err}")
            rc = 1
        return rc, time.perf_counter() - start

    def _done(self, step, ident, rc, seconds, progress, task) -> None:
        self.finish(step, ident, rc, seconds)
        state = self.status[step.name]
        mark = {"done": "[green]✓", "failed": "[red]✗", "interrupted": "[red]■"}.get(state, "?")
        extra = "" if state == "done" else f" (log: {self.run_dir / 'logs' / (step.name + '.log')})"
        self.say(f"{mark} {step.section}: {step.name} {state} in {seconds:.0f} s{extra}")
        self._advance(progress, task)

    @staticmethod
    def _advance(progress, task) -> None:
        if progress is not None:
            progress.advance(task)


# ---- the machine and the code ------------------------------------------------------------------------------------
def machine() -> dict:
    import torch

    info = {"host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}
    try:
        info["slurm_job"] = os.environ["SLURM_JOB_ID"]
    except KeyError:
        pass
    return info


def commit() -> dict:
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True).stdout.strip())
        return {"commit": rev, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown (not a git checkout)", "dirty": None}


# ---- main --------------------------------------------------------------------------------------------------------
def load_study_file(path: str | None) -> dict:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"study config not found: {p}")
    study = yaml.safe_load(p.read_text()) or {}
    if not isinstance(study, dict):
        raise ValueError(f"{p}: a study config is a mapping (title, name, preset, sections)")
    allowed = {"title", "name", "preset", "sections", "description", "jobs", "slurm"}
    unknown = sorted(set(study) - allowed)
    if unknown:
        raise ValueError(f"{p}: unknown key {', '.join(unknown)}; a study config takes {', '.join(sorted(allowed))}")
    return study


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cli.py study", description="Run the study and write runs/<name>/report.md.")
    parser.add_argument("--config", help="study YAML (configs/digits/study.yaml): title, name, preset, sections")
    parser.add_argument("--preset", help=f"one of {', '.join(PRESETS)} (overrides the config's)")
    parser.add_argument("--sections", nargs="+", help=f"run only these sections: {', '.join(SECTIONS)}")
    parser.add_argument("--name", help="run folder runs/<name> (default: study-<preset>)")
    parser.add_argument("--jobs", type=int, help="steps run at once (default: 2, or 1 with one CPU)")
    parser.add_argument("--threads", type=int, help="CPU threads per step (default: CPUs / jobs; oversubscribed "
                        "OpenMP threads slow a loaded CPU many times over)")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local",
                        help="local: run the steps here; slurm: submit each step as a job, chained by what it reads, "
                        "and a last job that writes the report (resources: the preset's, then the config's slurm:)")
    parser.add_argument("--status", action="store_true", help="with --launcher slurm: show the chain's jobs")
    parser.add_argument("--runs-root", default="runs", help="parent folder of the run folder")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # tests: no interpreter start-up
    # a step worker of the run in this folder (study/worker.py): started by the runner, reads steps from stdin
    parser.add_argument("--serve-steps", metavar="RUN_FOLDER", help=argparse.SUPPRESS)
    parser.add_argument("--list", action="store_true", help="print the planned steps and exit")
    parser.add_argument("--report-only", action="store_true", help="run no step: write the report from what the "
                        "steps wrote (a step counts as done when its output exists)")
    parser.add_argument("--publish", help="also copy the report (md, json, figures, step configs) into this folder, "
                        "e.g. docs/results/<date>-small")
    return parser


def lists_own_steps(argv: list[str]) -> bool:
    """Whether ``--config`` names a custom chain study (a YAML with ``steps:``) rather than the built-in one."""
    for path in config_files(argv):
        if Path(path).is_file():
            study = yaml.safe_load(Path(path).read_text())
            return isinstance(study, dict) and "steps" in study
    return False


def without_launcher(argv: list[str]) -> list[str]:
    """The study's arguments less ``--launcher <kind>`` and ``--status``: what its report job is given."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--launcher":
            skip = True
        elif not arg.startswith("--launcher=") and arg != "--status":
            out.append(arg)
    return out


def main(argv: list[str] | None = None, run_in_process=None) -> int:
    """``cli.py study``; ``run_in_process`` (the CLI's own entry, passed down by it) serves ``--in-process``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if lists_own_steps(argv):
        from .chain import main as chain_main

        chain_main(argv)
        return 0
    ns = make_parser().parse_args(argv)
    if ns.serve_steps:
        if run_in_process is None:
            raise ValueError("--serve-steps needs the CLI's entry point: the runner starts it as `cli.py study`")
        from .worker import serve

        return serve(run_in_process, ns.threads)
    if ns.launcher == "slurm":
        from ..launch.slurm import require_sbatch

        require_sbatch()  # says what is missing before anything runs
    elif ns.status:
        raise ValueError("--status shows a SLURM chain: add --launcher slurm")
    if ns.in_process and run_in_process is None:
        raise ValueError("--in-process needs the CLI's entry point: run it as `cli.py study --in-process`")
    study = load_study_file(ns.config)
    preset = get_preset(ns.preset or study.get("preset", "tiny"))
    sections = parse_sections(ns.sections or study.get("sections"))
    missing = preset.missing_data()
    if missing:
        raise FileNotFoundError(f"the {preset.name} preset reads {', '.join(missing)}, which "
                                f"{'is' if len(missing) == 1 else 'are'} not on disk: put the dataset there "
                                "(see data/README.md) or choose --preset small")
    name = ns.name or study.get("name") or f"study-{preset.name}"
    if "{preset}" in name:
        name = name.format(preset=preset.name)
    run_dir = Path(ns.runs_root) / name
    plan, extra = build_plan(preset, run_dir, sections)
    if ns.list:
        for step in plan.steps.values():
            print(f"{step.section:28s} {step.name:40s} {step.command:8s} {' + '.join(step.configs)}")
        return 0
    jobs = ns.jobs or study.get("jobs") or (2 if (os.cpu_count() or 1) > 1 else 1)
    threads = ns.threads or max(1, (os.cpu_count() or 1) // jobs)
    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)  # the report's own sampling and scoring, too
    if ns.launcher == "slurm" and not ns.report_only:
        from .slurm import show_status, submit_study

        if ns.status:
            return show_status(run_dir)
        print(f"study preset {preset.name} ({preset.summary}); {len(plan.steps)} steps as SLURM jobs; folder {run_dir}")
        report_cmd = [sys.executable, "-m", "lightning_guidance.cli", "study", *without_launcher(argv), "--report-only"]
        submit_study(StepRunner(run_dir, plan.steps), preset, study, report_cmd)
        return 0
    try:
        return _run(ns, study, preset, sections, run_dir, plan, extra, jobs, threads,
                    run_in_process if ns.in_process else None)
    finally:
        torch.set_num_threads(threads_before)  # in-process callers (tests) get their setting back


def _run(ns, study, preset, sections, run_dir, plan, extra, jobs, threads, run_in_process) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from .report import RUN_SETTINGS, record_run, write_report

    console = Console(stderr=False)
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    console.print(f"[bold]study[/bold] preset {preset.name} ({preset.summary}); {len(plan.steps)} steps, "
                  f"{jobs} at a time, {threads} thread(s) each; folder {run_dir}")
    runner = StepRunner(run_dir, plan.steps, jobs=jobs, in_process=run_in_process, console=console, threads=threads)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    if ns.report_only:
        if (run_dir / "slurm").is_dir():  # steps that SLURM jobs finished: recorded as the local runner would
            from .slurm import record_finished_jobs

            record_finished_jobs(runner, preset, study)
        status = {n: "done" if Path(s.product).is_file() else "not run" for n, s in plan.steps.items()}
        runner.status = status
        for name, step in plan.steps.items():  # each step's own seconds, as its run recorded them
            marker = runner.marker_path(step)
            if name not in runner.seconds and status[name] == "done" and marker.is_file():
                runner.seconds[name] = float(json.loads(marker.read_text()).get("seconds", 0.0))
        ran = False
    else:
        with Progress(*columns, console=console, transient=False) as progress:
            runner.console = progress.console
            status = runner.run(progress)
        ran = bool(runner.seconds)  # at least one step was started (not only skipped)
    ctx = Context(preset, run_dir, plan.steps, status, extra["sections"])
    meta = {"title": study.get("title", "lightning-guidance study"), "description": study.get("description", ""),
            "preset": preset.as_dict(), "sections_requested": sections, "machine": machine(), **commit(),
            "started_utc": started.isoformat(timespec="seconds"), "jobs": jobs, "threads_per_step": threads,
            "steps": {n: {"section": s.section, "command": s.command, "status": status.get(n, "not run"),
                          "seconds": round(runner.seconds.get(n, 0.0), 1), "config": f"configs/{n}.yaml"}
                      for n, s in plan.steps.items()}}
    report = write_report(ctx, meta, sections, extra["digits_runs"], t0, console, rebuilt=not ran)
    if ran:  # what a later rebuild of the report shows as the run's wall time
        record_run(run_dir, {"started_utc": report["started_utc"], "wall_seconds": report["wall_seconds"],
                             **{k: report[k] for k in RUN_SETTINGS},
                             "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                             "steps_run": len(runner.seconds), "exit": "interrupted" if runner.interrupted
                             else "failed" if [n for n, s in status.items() if s not in DONE_STATES] else "ok"})
    if ns.publish:
        from .report import publish

        console.print(f"published: {publish(run_dir, Path(ns.publish))}")
    failed = [n for n, s in status.items() if s not in DONE_STATES]
    failed_sections = [k for k, v in report["sections"].items() if v["status"] == "failed"]
    console.print(f"report: {run_dir / 'report.md'}")
    if runner.interrupted is not None:
        console.print(f"[red]interrupted by signal {runner.interrupted}; re-run to resume")
        return 128 + runner.interrupted
    if failed or failed_sections:
        console.print(f"[red]failed steps: {', '.join(failed) or 'none'}; failed sections: "
                      f"{', '.join(failed_sections) or 'none'}")
        return 1
    return 0
