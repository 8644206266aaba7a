"""A :class:`~.steps.StepRunner`'s steps on SLURM (``cli.py study --launcher slurm``): every step its own job from the
``slurm/`` templates (:mod:`.slurm`), held with ``--dependency=afterok`` until the jobs of the steps whose
products it reads have succeeded, and a last job that writes the report (the same ``cli.py study`` arguments with
``--report-only``) once they all ended, whatever their end: the report then names the steps that did not finish.

Resources (sbatch's names) come from ``defaults`` (the study's: ``Preset.slurm``), then ``spec``, the study YAML's
``slurm:`` mapping::

    slurm:
      default: {cpus_per_task: 4, time: "02:00:00"}    # every step
      steps:                                           # shell patterns on step names or section keys; later win
        digits-cfg: {nodes: 2, ntasks_per_node: 4, sbatch: ["--gpus-per-node=4"]}
        "sample-digits-*": {array: 4}                  # predict: a job array over the shards

A step run as more than one task or node gets ``trainer.devices`` / ``trainer.num_nodes`` set to match in its
config (``runs/<name>/configs/<step>.yaml``), so the config it leaves says the world size it ran with, and the
job's arguments never contradict it.

Which steps are finished is decided as on one machine, by the runner's step markers (config and input digests).
A job that succeeded leaves its done marker in ``runs/<name>/slurm/done/``; the next submission, or the report job,
turns it into the runner's marker when the step's product is there and none of its inputs was rewritten after it.
A re-submission skips finished steps, keeps the jobs still queued or running, and submits the rest; a step whose
input step is submitted again is submitted again too (its old outputs moved aside, as the local runner does).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import replace
from pathlib import Path

from .slurm import SlurmChain, SlurmStep, format_status, slurm_resources, submit_with_report
from .steps import Step, step_config


def state_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "slurm"


def step_resources(step: Step, defaults: dict, spec: dict | None) -> dict:
    """The step's :class:`SlurmStep` keyword arguments: ``defaults``, ``spec["default"]``, then every
    ``spec["steps"]`` pattern that matches its name or section, in order."""
    spec = spec or {}
    where = "study config slurm"
    if not isinstance(spec, dict) or set(spec) - {"default", "steps"}:
        raise ValueError(f"{where}: a mapping with 'default' (resources of every step) and 'steps' (shell pattern "
                         f"on step names or sections: resources), got {spec!r}")
    merged = dict(defaults)
    merged.update(spec.get("default") or {})
    patterns = spec.get("steps") or {}
    if not isinstance(patterns, dict):
        raise ValueError(f"{where}.steps: a mapping of step-name patterns to resources, got {patterns!r}")
    for pattern, resources in patterns.items():
        if fnmatch.fnmatchcase(step.name, pattern) or fnmatch.fnmatchcase(step.section, pattern):
            if not isinstance(resources, dict):
                raise ValueError(f"{where}.steps.{pattern}: a mapping of resources, got {resources!r}")
            merged.update(resources)
    return slurm_resources(merged, f"study step {step.name!r}")


def with_world_size(step: Step, resources: dict) -> Step:
    """The step with ``trainer.devices`` / ``trainer.num_nodes`` set where its resources ask for another world size
    than its config states (one task per device)."""
    trainer = step_config(step).get("trainer") or {}
    edits = {}
    for key, want in (("trainer.devices", resources.get("ntasks_per_node", 1)),
                      ("trainer.num_nodes", resources.get("nodes", 1))):
        if trainer.get(key.split(".")[1], 1) != want:
            edits[key] = want
    return replace(step, edits={**step.edits, **edits}) if edits else step


def plan_jobs(runner, defaults: dict, spec: dict | None) -> list[SlurmStep]:
    """One :class:`SlurmStep` per planned step (its config written), checked before anything is submitted."""
    jobs = []
    for name, step in list(runner.steps.items()):
        resources = step_resources(step, defaults, spec)
        step = runner.steps[name] = with_world_size(step, resources)
        path = runner.write_config(step)  # the template resumes a fit itself (--ckpt_path last)
        job = SlurmStep(name, step.command, ("--config", str(path)), needs=tuple(step.needs),
                        key=runner.identity(step, path)["config_sha256"], **resources)
        job.check()
        jobs.append(job)
    return jobs


def adopt(runner, chain: SlurmChain, job: SlurmStep) -> bool:
    """Record as finished (the runner's marker) a step whose job succeeded: its done marker has the step's
    fingerprint, its product is there, and no input was rewritten after the job ended."""
    step = runner.steps[job.name]
    marker = chain.done_file(job)
    if not (chain.finished(job) and Path(step.product).is_file()):
        return False
    ended = marker.stat().st_mtime
    inputs = [Path(runner.steps[n].product) for n in step.needs]
    if any(not p.is_file() or p.stat().st_mtime > ended for p in inputs):
        return False
    runner.finish(step, runner.identity(step, runner.write_config(step)), 0,
                  float(json.loads(marker.read_text()).get("seconds", 0)))
    return True


def submit_steps(runner, defaults: dict, spec: dict | None, report_command: list[str], say=print) -> dict[str, str]:
    """Submit every step not finished (and the report job); ``{step: job id}`` of what was submitted or kept."""
    chain = SlurmChain(state_dir(runner.run_dir))
    jobs = plan_jobs(runner, defaults, spec)
    skipped, submitted = set(), set()
    for job in jobs:
        step = runner.steps[job.name]
        if not any(n in submitted for n in step.needs):
            current, stale = runner.is_current(step, runner.identity(step, runner.write_config(step)))
            if current or adopt(runner, chain, job):
                skipped.add(job.name)
                continue
            if stale:
                runner.move_aside(step)
        elif runner.marker_path(step).is_file():  # finished once, but what it reads is being made again
            runner.move_aside(step)
        submitted.add(job.name)
    report = step_resources(Step("report", "report", "report", []), defaults, spec)  # the report scores samples
    options = [f"--cpus-per-task={report['cpus_per_task']}"] if report.get("cpus_per_task") else []
    options += [f"--time={report['time']}"] if report.get("time") else []
    return submit_with_report(chain, jobs, report_command, runner.run_dir / "report.md",
                              finished=lambda job: job.name in skipped, report_after="afterany",
                              report_options=options + list(report["sbatch_args"]), say=say)


def record_finished_jobs(runner, defaults: dict, spec: dict | None) -> None:
    """For the report job (``--report-only``): the runner's markers and wall times of the steps SLURM finished."""
    chain = SlurmChain(state_dir(runner.run_dir))
    for job in plan_jobs(runner, defaults, spec):
        step = runner.steps[job.name]
        if not runner.is_current(step, runner.identity(step, runner.write_config(step)))[0]:
            adopt(runner, chain, job)
        marker = chain.done_file(job)
        if marker.is_file():
            runner.seconds[job.name] = float(json.loads(marker.read_text()).get("seconds", 0))


def show_status(run_dir: Path) -> int:
    """Print the state of the chain submitted from ``run_dir``; 0."""
    chain = SlurmChain(state_dir(run_dir))
    if not chain.chain_file.is_file():
        raise FileNotFoundError(f"no SLURM chain under {state_dir(run_dir)}: submit it first (cli.py study ... "
                                "--launcher slurm)")
    print(format_status(chain.status()))
    return 0
