"""A custom chain study: a YAML that lists its own steps (``steps:``), run in order, one report of their figures.

The built-in study (presets and sections, :mod:`.runner`) is what ``configs/digits/study.yaml`` runs; a study file
with a ``steps:`` list is run here instead.

Each step is one ``fit | validate | test | predict`` call with its own config, run as a subprocess, so a step
that dies leaves the others' files intact. ``fit`` steps always pass ``--ckpt_path last``: a re-run resumes a
killed training run and a finished one returns at once; ``predict`` skips shards already written by the same
config, and regenerates (``overwrite``) shards whose key no longer matches, e.g. after a retrain. A step whose
input files (the checkpoints its config names) changed since it last ran is run again from scratch
(``<report>.state.json`` records each finished step's input digests). The report quotes only figures the steps
just wrote (metrics.csv, shard manifests, metric tables), links pictures relative to itself, and holds no timing,
so re-running a finished study rewrites it identically. SIGTERM/SIGINT are forwarded to the running step; the study
waits for it, marks it interrupted and exits with ``128 + signal``; a re-run continues.

``--launcher slurm`` submits the same steps as a SLURM job chain instead (``launch.slurm``; each step's ``slurm:``
mapping gives its nodes, tasks per node, cpus per task, time, and for predict an ``array`` of shard ranges), then a
last job that writes the report from the steps' files (``--report-only``); ``--launcher slurm --status`` shows it.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..io.atomic import atomic_write_text, remove_stale_temps
from ..io.digests import file_digest
from ..io.shards import read_manifest
from ..io.tables import markdown_table
from ..launch.arguments import COMMANDS, config_files


@dataclass
class Step:
    name: str
    command: str
    config: str
    args: list[str] = field(default_factory=list)
    outputs: str | None = None  # the folder whose figures the report quotes (defaults from the config)
    slurm: dict | None = None  # this step's job resources under --launcher slurm (see launch.slurm.SlurmStep)


def load_study(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study config not found: {path}")
    study = yaml.safe_load(path.read_text())
    steps = []
    for i, raw in enumerate(study.get("steps") or []):
        step = Step(**raw)
        if step.command not in COMMANDS:
            raise ValueError(f"step {i} ({step.name}): unknown command {step.command!r}; choose one of {COMMANDS}")
        if not Path(step.config).is_file():
            raise FileNotFoundError(f"step {i} ({step.name}): config not found: {step.config}")
        steps.append(step)
    if not steps:
        raise ValueError(f"{path} lists no steps")
    study["steps"] = steps
    return study


class StepInterrupted(Exception):
    def __init__(self, step: Step, signum: int):
        super().__init__(f"study step {step.name!r} interrupted by {signal.Signals(signum).name}")
        self.step, self.signum = step, signum


def _config_files(step: Step) -> list[str]:
    return [step.config, *config_files(step.args)]


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def step_inputs(step: Step) -> dict[str, str]:
    """Content digests of the files a step reads that earlier steps write: the checkpoint / weights files its
    configs and arguments name (``.ckpt``, ``.pt``, ``.pth``, ``.safetensors``) that exist now."""
    names = list(step.args)
    for config in _config_files(step):
        try:
            names += _strings(yaml.safe_load(Path(config).read_text()))
        except (OSError, yaml.YAMLError):
            continue
    found = {}
    for name in names:
        if name.endswith((".ckpt", ".pt", ".pth", ".safetensors")) and Path(name).is_file():
            found[name] = file_digest(name)
    return found


def _is_sampling(step: Step) -> bool:
    cfg = yaml.safe_load(Path(step.config).read_text()) or {}
    return str((cfg.get("model") or {}).get("class_path", "")).endswith("SamplingModule")


def step_command(step: Step, extra: list[str], stale: bool) -> list[str]:
    cmd = [sys.executable, "-m", "lightning_guidance.cli", step.command, "--config", step.config, *step.args, *extra]
    if step.command == "fit" and "--ckpt_path" not in step.args:
        # resume, unless what it was trained from changed: then it trains again from scratch
        cmd += ["--ckpt_path", "null" if stale else "last"]
    if step.command == "predict" and _is_sampling(step):
        cmd += ["--model.init_args.overwrite", "true"]  # shards keyed to an older checkpoint are regenerated
    return cmd


_forwarded: list[int] = []


def run_step(step: Step, extra: list[str], stale: bool = False) -> float:
    cmd = step_command(step, extra, stale)
    print(f"\n==> [{step.name}] {shlex.join(cmd)}" + (" (its inputs changed: run again)" if stale else ""),
          flush=True)
    start = time.perf_counter()
    # its own session: a Ctrl-C in the terminal reaches the step once, through the study
    child = subprocess.Popen(cmd, start_new_session=True)

    def forward(signum, frame):
        _forwarded.append(signum)
        if child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        returncode = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if _forwarded:
        raise StepInterrupted(step, _forwarded[0])
    if returncode != 0:
        raise SystemExit(f"study step {step.name!r} failed (exit {returncode}); fix it and re-run the study: "
                         "finished steps are skipped or resumed")
    return time.perf_counter() - start


def _root_of(step: Step) -> Path | None:
    """Where a step writes: ``output_dir`` or ``default_root_dir``, from its arguments, else from its config."""
    for key in ("--model.init_args.output_dir", "--trainer.default_root_dir"):
        if key in step.args[:-1]:
            return Path(step.args[step.args.index(key) + 1])
    cfg = yaml.safe_load(Path(step.config).read_text()) or {}
    model_args = ((cfg.get("model") or {}).get("init_args") or {})
    out = model_args.get("output_dir") or (cfg.get("trainer") or {}).get("default_root_dir")
    return Path(out) if out else None


def _last_metrics(csv_path: Path) -> dict[str, float]:
    last: dict[str, float] = {}
    with csv_path.open() as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if v not in (None, "") and k not in ("epoch",):
                    last[k] = float(v)
    return last


def _link(target: Path, report_dir: Path) -> str:
    return Path(os.path.relpath(Path(target).resolve(), report_dir.resolve())).as_posix()


def summarize_step(step: Step, report_dir: Path) -> list[str]:
    root = Path(step.outputs) if step.outputs else _root_of(step)
    lines = [f"### {step.name} (`{step.command} --config {step.config}`)", ""]
    if root is None:
        return lines
    for csv_path in sorted(root.rglob("metrics.csv")):
        m = _last_metrics(csv_path)
        shown = {k: v for k, v in m.items() if k.startswith(("train/", "val/", "test/")) or k == "step"}
        lines += [f"Last logged values ([{csv_path.name}]({_link(csv_path, report_dir)})):", ""]
        lines += markdown_table(["metric", "value"], [(k, f"{v:.5g}") for k, v in sorted(shown.items())]) + [""]
    data = read_manifest(root) if step.command == "predict" else None
    if data is not None:
        lines += markdown_table(["scale", "samples", "picture"],
                                [(s, info["count"], f"![{s}]({_link(root / info['grid'], report_dir)})")
                                 for s, info in data["values"].items()]) + [""]
    for table in sorted(root.rglob("metrics_table.md")) if step.command != "predict" else []:
        lines += [f"Metrics ([{table.name}]({_link(table, report_dir)})):", "", table.read_text(), ""]
    return lines


def main(argv: list[str] | None = None) -> Path:
    import argparse

    parser = argparse.ArgumentParser(prog="cli.py study", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="study YAML (e.g. configs/digits/study.yaml)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these step names")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local",
                        help="local: run the steps here one after another; slurm: submit them as a job chain")
    parser.add_argument("--status", action="store_true", help="with --launcher slurm: show the chain's jobs")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report from the steps' files, run nothing")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="extra arguments appended to every step (after --)")
    ns = parser.parse_args(argv)
    study = load_study(ns.config)
    extra = [a for a in ns.extra if a != "--"]
    report_path = Path(study.get("report", "runs/report.md"))
    steps = [step for step in study["steps"] if ns.only is None or step.name in ns.only]
    if ns.launcher == "slurm":
        return submit_to_slurm(ns.config, study, steps, extra, report_path, ns.status)
    remove_stale_temps(report_path.parent)
    state_path = report_path.with_name(report_path.name + ".state.json")
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    lines = [f"# {study.get('title', 'Study')}", "", study.get("description", "").strip(), ""]
    total = time.perf_counter()
    _forwarded.clear()
    for step in study["steps"]:
        if ns.only is not None and step.name not in ns.only:
            continue
        recorded = (state.get(step.name) or {}).get("inputs")
        inputs = step_inputs(step)
        stale = recorded is not None and recorded != inputs
        try:
            seconds = 0.0 if ns.report_only else run_step(step, extra, stale)
        except StepInterrupted as stop:
            state[step.name] = {"status": "interrupted", "inputs": recorded}
            atomic_write_text(state_path, json.dumps(state, indent=2, sort_keys=True))
            lines += [f"### {step.name}: interrupted by {signal.Signals(stop.signum).name}", "",
                      "Re-run the study to continue from here.", ""]
            atomic_write_text(report_path, "\n".join(lines) + "\n")
            print(f"\nstudy interrupted at step {step.name!r} ({signal.Signals(stop.signum).name}); its files are "
                  "whole; re-run the study to continue", file=sys.stderr)
            raise SystemExit(128 + stop.signum) from None
        print(f"[{step.name}] {seconds:.0f} s", flush=True)
        state[step.name] = {"status": "done", "inputs": inputs}
        atomic_write_text(state_path, json.dumps(state, indent=2, sort_keys=True))
        lines += summarize_step(step, report_path.parent)
    atomic_write_text(report_path, "\n".join(lines) + "\n")
    print(f"\nreport written: {report_path} (total {time.perf_counter() - total:.0f} s)")
    print("\n".join(lines))
    return report_path


def slurm_state_dir(report_path: Path) -> Path:
    """Where the SLURM chain of the study whose report is ``report_path`` keeps its files."""
    return report_path.parent / f"{report_path.stem}_slurm"


def slurm_steps(steps: list[Step], extra: list[str]):
    from ..launch.slurm import SlurmStep, slurm_resources

    return [SlurmStep(step.name, step.command, ("--config", step.config, *step.args, *extra),
                      **slurm_resources(step.slurm, f"study step {step.name!r}")) for step in steps]


def submit_to_slurm(config: str, study: dict, steps: list[Step], extra: list[str], report_path: Path,
                    status_only: bool) -> Path:
    """Submit the steps as a chain (each after the one before), then a job that writes the report; or print the
    chain's state."""
    from ..launch.slurm import SlurmChain, format_status, require_sbatch, submit_with_report

    chain = SlurmChain(slurm_state_dir(report_path))
    if status_only:
        require_sbatch(chain.sbatch)
        print(format_status(chain.status()))
        return chain.chain_file
    report_cmd = [sys.executable, "-m", "lightning_guidance.cli", "study", "--config", config, "--report-only",
                  *(["--only", *[s.name for s in steps]] if len(steps) != len(study["steps"]) else [])]
    submit_with_report(chain, slurm_steps(steps, extra), report_cmd, report_path)
    return chain.chain_file


if __name__ == "__main__":
    main()
