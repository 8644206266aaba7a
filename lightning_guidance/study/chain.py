"""A custom chain study: a YAML that lists its own steps (``steps:``), run in order, one report of their figures.

The built-in study (presets and sections, :mod:`.runner`) is what ``configs/digits/study.yaml`` runs; a study file
with a ``steps:`` list is run here instead.

Each step is one ``fit | validate | test | predict`` call with its own config, run as a subprocess, so a step
that dies leaves the others' files intact. ``fit`` steps always pass ``--ckpt_path last``: a re-run resumes a
killed training run and a finished one returns at once; ``predict`` skips shards already written. The report
quotes only figures the steps just wrote (metrics.csv, shard manifests, metric tables).
"""

from __future__ import annotations

import csv
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..io.atomic import atomic_write_text
from ..io.shards import read_manifest
from ..io.tables import markdown_table

SUBCOMMANDS = ("fit", "validate", "test", "predict")


@dataclass
class Step:
    name: str
    command: str
    config: str
    args: list[str] = field(default_factory=list)
    outputs: str | None = None  # the folder whose figures the report quotes (defaults from the config)


def load_study(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study config not found: {path}")
    study = yaml.safe_load(path.read_text())
    steps = []
    for i, raw in enumerate(study.get("steps") or []):
        step = Step(**raw)
        if step.command not in SUBCOMMANDS:
            raise ValueError(f"step {i} ({step.name}): unknown command {step.command!r}; choose one of {SUBCOMMANDS}")
        if not Path(step.config).is_file():
            raise FileNotFoundError(f"step {i} ({step.name}): config not found: {step.config}")
        steps.append(step)
    if not steps:
        raise ValueError(f"{path} lists no steps")
    study["steps"] = steps
    return study


def run_step(step: Step, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "lightning_guidance.cli", step.command, "--config", step.config, *step.args, *extra]
    if step.command == "fit" and "--ckpt_path" not in step.args:
        cmd += ["--ckpt_path", "last"]
    print(f"\n==> [{step.name}] {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise SystemExit(f"study step {step.name!r} failed (exit {result.returncode}); fix it and re-run the study: "
                         "finished steps are skipped or resumed")
    return time.perf_counter() - start


def _root_of(config: str) -> Path | None:
    cfg = yaml.safe_load(Path(config).read_text()) or {}
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


def summarize_step(step: Step, seconds: float) -> list[str]:
    root = Path(step.outputs) if step.outputs else _root_of(step.config)
    lines = [f"### {step.name} (`{step.command} --config {step.config}`, {seconds:.0f} s)", ""]
    if root is None:
        return lines
    for csv_path in sorted(root.rglob("metrics.csv")):
        m = _last_metrics(csv_path)
        shown = {k: v for k, v in m.items() if k.startswith(("train/", "val/", "test/")) or k == "step"}
        lines += [f"Last logged values ({csv_path}):", ""]
        lines += markdown_table(["metric", "value"], [(k, f"{v:.5g}") for k, v in sorted(shown.items())]) + [""]
    data = read_manifest(root) if step.command == "predict" else None
    if data is not None:
        lines += markdown_table(["scale", "samples", "picture"],
                                [(s, info["count"], f"![{s}]({Path(info['grid']).resolve()})")
                                 for s, info in data["scales"].items()]) + [""]
    for table in sorted(root.rglob("metrics_table.md")) if step.command != "predict" else []:
        lines += [f"Metrics ({table}):", "", table.read_text(), ""]
    return lines


def main(argv: list[str] | None = None) -> Path:
    import argparse

    parser = argparse.ArgumentParser(prog="cli.py study", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="study YAML (e.g. configs/digits/study.yaml)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these step names")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="extra arguments appended to every step (after --)")
    ns = parser.parse_args(argv)
    study = load_study(ns.config)
    extra = [a for a in ns.extra if a != "--"]
    report_path = Path(study.get("report", "runs/report.md"))
    lines = [f"# {study.get('title', 'Study')}", "", study.get("description", "").strip(), ""]
    total = time.perf_counter()
    for step in study["steps"]:
        if ns.only is not None and step.name not in ns.only:
            continue
        seconds = run_step(step, extra)
        lines += summarize_step(step, seconds)
    lines.append(f"Total wall time: {time.perf_counter() - total:.0f} s.")
    atomic_write_text(report_path, "\n".join(lines) + "\n")
    print(f"\nreport written: {report_path}")
    print("\n".join(lines))
    return report_path


if __name__ == "__main__":
    main()
