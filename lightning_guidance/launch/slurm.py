"""The study as a SLURM job chain: each step its own ``sbatch`` job from the templates in ``slurm/``, each job
``--dependency=afterok`` on the jobs of the steps it needs (by default the one before), so a step starts only when
what it reads was written.

The interface is small on purpose: a list of :class:`SlurmStep` in, ``{step name: job id}`` out
(:meth:`SlurmChain.submit`; :func:`submit_with_report` adds the job that writes the report and prints the ids), and
:meth:`SlurmChain.status` for the chain's state; the study's steps (``launch/step_jobs.py``) are its user.

- ``fit`` steps run ``slurm/train.sbatch`` (which always resumes with ``--ckpt_path last``), every other command
  ``slurm/predict.sbatch`` with ``SUBCOMMAND`` set; both requeue themselves before their time limit.
- A ``predict`` step with ``array: K`` fans out as a job array of K tasks, task i sampling the shards i, i + K, ...
  (the template passes ``--model.init_args.shard_part [i, K]``), then one collecting job (every shard already
  written, so it only writes the manifest and grids) that the next step depends on.
- Each job that succeeds writes ``<state_dir>/done/<step>.json`` (the step's fingerprint and its wall time). A
  re-submission skips a step whose marker has the same fingerprint (the same command, arguments, resources and
  ``key``) unless a step it needs is submitted again, re-uses the job of a step still pending or running behind the
  jobs it should wait for, and submits the rest; ``--kill-on-invalid-dep`` cancels a
  step whose predecessor failed instead of leaving it pending forever.
- What was submitted is recorded in ``<state_dir>/chain.json`` (written atomically), which ``status`` reads.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..io.atomic import atomic_write_text
from .arguments import COMMANDS, config_arguments, config_files, last_value

RESOURCE_KEYS = ("nodes", "ntasks_per_node", "cpus_per_task", "time", "array", "sbatch")
TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # sbatch --time: minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED")
TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "slurm"


@dataclass(frozen=True)
class SlurmStep:
    """One ``cli.py <command> <args>`` call and the resources of its job (sbatch's names)."""

    name: str
    command: str
    args: tuple[str, ...] = ()
    nodes: int = 1
    ntasks_per_node: int = 1
    cpus_per_task: int | None = None
    time: str | None = None
    array: int | None = None  # predict only: this many array tasks over the shards
    sbatch_args: tuple[str, ...] = field(default=())
    needs: tuple[str, ...] | None = None  # the steps whose jobs it waits for; None: the step before it
    key: str = ""  # what else says which work it does (the built-in study: its config file's digest)

    def check(self) -> None:
        """Raise ``ValueError`` naming the step when its resources are impossible or contradict its arguments."""
        where = f"study step {self.name!r}"
        if self.command not in COMMANDS:
            raise ValueError(f"{where}: unknown command {self.command!r}; choose one of {COMMANDS}")
        for what, v in (("nodes", self.nodes), ("ntasks_per_node", self.ntasks_per_node),
                        ("cpus_per_task", self.cpus_per_task), ("array", self.array)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{where}: slurm {what} must be a positive int, got {v!r}")
        if self.time is not None and not TIME.match(str(self.time)):
            raise ValueError(f"{where}: slurm time {self.time!r} is not an sbatch time (e.g. 30, 01:30:00, 1-12)")
        if self.array is not None and self.command != "predict":
            raise ValueError(f"{where}: slurm array fans out sampling over shards; {self.command} steps cannot use it")
        for flag, want, what in (("--trainer.num_nodes", self.nodes, "nodes"),
                                 ("--trainer.devices", self.ntasks_per_node, "ntasks_per_node")):
            given = last_value(self.args, flag)
            if given is not None and given != str(want):
                raise ValueError(f"{where}: its arguments say {flag} {given} but its slurm resources say {what}: "
                                 f"{want} (one task per device); make them agree, or drop {flag}: the job passes it")
        if not config_files(self.args):
            raise ValueError(f"{where}: no --config in its arguments; the SLURM templates need one")

    @property
    def fingerprint(self) -> str:
        fields = asdict(self)
        for name, default in (("needs", None), ("key", "")):  # unset: the same fingerprint as before they existed
            if fields[name] == default:
                del fields[name]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def slurm_resources(mapping: dict | None, where: str) -> dict:
    """A study YAML's ``slurm:`` mapping (sbatch's names: nodes, ntasks_per_node, cpus_per_task, time, array,
    sbatch: [extra options]) as :class:`SlurmStep` keyword arguments; unknown keys are refused, naming ``where``."""
    if not isinstance(mapping or {}, dict):
        raise ValueError(f"{where}: slurm resources are a mapping of {list(RESOURCE_KEYS)}, got {mapping!r}")
    resources = dict(mapping or {})
    unknown = sorted(set(resources) - set(RESOURCE_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown slurm keys {unknown}; use {list(RESOURCE_KEYS)}")
    sbatch = resources.pop("sbatch", ()) or ()
    if isinstance(sbatch, str):
        sbatch = shlex.split(sbatch)
    return {**resources, "sbatch_args": tuple(str(a) for a in sbatch)}


def _first_config(step: SlurmStep) -> tuple[str, list[str]]:
    """(the first ``--config`` value, the other arguments in order)."""
    args = list(step.args)
    for i, n, value in config_arguments(args)[:1]:
        return value, args[:i] + args[i + n:]
    raise ValueError(f"study step {step.name!r}: no --config in its arguments; the SLURM templates need one")


class SubmitError(RuntimeError):
    """sbatch refused a job (the cluster is unreachable, or rejects the resources); the message is one line."""


def _refused(cmd: list[str], stderr: str) -> SubmitError:
    why = "; ".join(line.strip() for line in stderr.strip().splitlines() if line.strip()) or "no message"
    return SubmitError(f"sbatch refused the job {_option(cmd, '--job-name')}: {why} (command: {shlex.join(cmd)})")


def _option(cmd: list[str], name: str) -> str:
    return next((a.split("=", 1)[1] for a in cmd if a.startswith(name + "=")), "?")


def require_sbatch(sbatch: str = "sbatch") -> str:
    found = shutil.which(sbatch)
    if found is None:
        raise FileNotFoundError(f"--launcher slurm needs {sbatch!r} on PATH and there is none: run on a SLURM login "
                                "node (or scripts/slurm/slurm_local.sh up <dir> for a local cluster), or drop --launcher")
    return found


class SlurmChain:
    """Submit steps as one dependent job chain and report its state; files under ``state_dir``."""

    def __init__(self, state_dir: str | Path, workdir: str | Path = ".", python: str = sys.executable,
                 sbatch: str = "sbatch", templates: str | Path = TEMPLATE_DIR):
        self.state_dir = Path(state_dir).resolve()
        self.workdir = Path(workdir).resolve()
        self.python = python
        self.sbatch = sbatch
        self.templates = Path(templates)

    # ---- files --------------------------------------------------------------------------------------
    @property
    def chain_file(self) -> Path:
        return self.state_dir / "chain.json"

    def done_file(self, step: SlurmStep | str) -> Path:
        return self.state_dir / "done" / f"{step if isinstance(step, str) else step.name}.json"

    def _recorded(self) -> dict:
        return json.loads(self.chain_file.read_text()) if self.chain_file.is_file() else {"steps": []}

    def finished(self, step: SlurmStep) -> bool:
        marker = self.done_file(step)
        return marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == step.fingerprint

    # ---- SLURM --------------------------------------------------------------------------------------
    def queue_state(self, job_id: str) -> str | None:
        """PENDING, RUNNING, COMPLETED, FAILED, ... while SLURM still knows the job (array: the first task's),
        else None (finished jobs are forgotten after slurm.conf's MinJobAge)."""
        done = subprocess.run([self._tool("squeue"), "-h", "-t", "all", "-j", job_id, "-o", "%T"],
                              capture_output=True, text=True, check=False)
        states = done.stdout.split()
        return states[0] if done.returncode == 0 and states else None

    def _tool(self, name: str) -> str:
        return str(Path(self.sbatch).with_name(name)) if "/" in self.sbatch else name

    def _sbatch(self, options: list[str], template: Path, args: list[str], env: dict[str, str]) -> str:
        exports = ",".join(["ALL"] + [f"{k}={v}" for k, v in env.items()])
        cmd = [self.sbatch, "--parsable", f"--chdir={self.workdir}", f"--export={exports}", *options, str(template),
               *args]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise _refused(cmd, done.stderr)
        return done.stdout.strip().split(";")[0]

    def _submit_step(self, step: SlurmStep, after: list[str]) -> list[str]:
        """Submit one step (an array step: the array, then its collecting job); returns the job ids, last = the one
        the steps after it wait for."""
        template = self.templates / ("train.sbatch" if step.command == "fit" else "predict.sbatch")
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        options = [f"--job-name=lg-{step.name}", f"--nodes={step.nodes}", f"--ntasks-per-node={step.ntasks_per_node}"]
        options += [f"--cpus-per-task={step.cpus_per_task}"] if step.cpus_per_task else []
        options += [f"--time={step.time}"] if step.time else []
        options += list(step.sbatch_args)
        depends = _depends("afterok", after)
        config, args = _first_config(step)  # the templates take the first --config as CONFIG, the rest as arguments
        env = {"CONFIG": config, "PYTHON": self.python, "SUBCOMMAND": step.command,
               "LG_DONE_FILE": str(self.done_file(step)), "LG_FINGERPRINT": step.fingerprint}
        ids = []
        if step.array:
            array_env = {**{k: v for k, v in env.items() if k != "LG_DONE_FILE"}, "LG_SHARD_ARRAY": "1"}
            ids.append(self._sbatch([*options, *depends, f"--array=0-{step.array - 1}",
                                     f"--output={logs}/{step.name}-%A_%a.out"], template, args, array_env))
            depends = _depends("afterok", ids[-1:])
        ids.append(self._sbatch([*options, *depends, f"--output={logs}/{step.name}-%j.out"], template, args, env))
        return ids

    # ---- the interface --------------------------------------------------------------------------------
    def submit(self, steps: list[SlurmStep], finished=None) -> dict[str, str]:
        """Submit the steps as a chain; ``{name: job id}`` of every step not finished yet (a step still pending or
        running keeps its job). Finished steps are skipped and left out: by default those whose done marker has
        their fingerprint, or ``finished(step)``; never a step that needs one submitted (or kept) now."""
        for step in steps:
            step.check()
        if len({s.name for s in steps}) != len(steps):
            raise ValueError("study step names must be unique: the chain's files are named after them")
        names = [s.name for s in steps]
        for step in steps:
            unknown = [n for n in step.needs or () if n not in names[:names.index(step.name)]]
            if unknown:
                raise ValueError(f"study step {step.name!r} needs {unknown}, which are not steps before it")
        finished = finished or self.finished
        recorded = {r["name"]: r for r in self._recorded()["steps"]}
        jobs: dict[str, str] = {}  # the job each submitted (or kept) step's dependants wait for
        last: str | None = None  # the newest of those: what a step with needs=None waits for
        submitted: dict[str, str] = {}
        rows = []
        for step in steps:
            after = ([jobs[n] for n in step.needs if n in jobs] if step.needs is not None
                     else [last] if last else [])
            old = recorded.get(step.name)
            if not after and finished(step):
                rows.append({**(old or {}), "name": step.name, "fingerprint": step.fingerprint, "skipped": True})
                continue
            alive = (old and old.get("fingerprint") == step.fingerprint
                     and self.queue_state(old["job_ids"][-1]) in ACTIVE)
            if alive and set(after) <= set(old.get("after", [])):
                ids = old["job_ids"]  # still queued or running, waiting on what it should: keep it
            else:
                if alive:  # queued behind a job this submission replaces: ours, so cancel it by its ids
                    subprocess.run([self._tool("scancel"), *old["job_ids"]], capture_output=True, check=False)
                ids = self._submit_step(step, after)
            submitted[step.name] = jobs[step.name] = last = ids[-1]
            rows.append({"name": step.name, "command": step.command, "fingerprint": step.fingerprint,
                         "job_ids": ids, "after": after, "skipped": False})
            self._record(rows, steps)
        self._record(rows, steps)
        return submitted

    def submit_command(self, name: str, command: list[str], after: list[str], dependency: str = "afterok",
                       options: list[str] = ()) -> str:
        """One plain job (e.g. the study's report) that runs ``command`` once the jobs ``after`` ended
        (``afterok``: succeeded; ``afterany``: whatever their end); ``options``: more sbatch options."""
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        cmd = [self.sbatch, "--parsable", f"--chdir={self.workdir}", f"--job-name=lg-{name}", "--nodes=1",
               "--ntasks=1", *options, *_depends(dependency, after), f"--output={logs}/{name}-%j.out",
               f"--wrap={shlex.join(command)}"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise _refused(cmd, done.stderr)
        job = done.stdout.strip().split(";")[0]
        rows = [r for r in self._recorded()["steps"] if r["name"] != name]
        rows.append({"name": name, "command": command[0], "fingerprint": "", "job_ids": [job], "after": after,
                     "skipped": False})
        atomic_write_text(self.chain_file, json.dumps({"steps": rows}, indent=2))
        return job

    def _record(self, rows: list[dict], steps: list[SlurmStep]) -> None:
        names = {r["name"] for r in rows}
        recorded = [r for r in self._recorded()["steps"] if r["name"] not in names and r["name"] in
                    {s.name for s in steps}]
        atomic_write_text(self.chain_file, json.dumps({"steps": rows + recorded}, indent=2))

    def status(self) -> list[dict]:
        """One row per recorded step: name, job ids, what it waits for, and its state (COMPLETED when its done
        marker is there; else SLURM's word while SLURM knows the job; else 'GONE': failed, cancelled or purged)."""
        out = []
        for row in self._recorded()["steps"]:
            marker = self.done_file(row["name"])
            if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == row["fingerprint"]:
                state = "COMPLETED"
            else:
                state = self.queue_state(row["job_ids"][-1]) if row.get("job_ids") else None
                state = state or "GONE"
            out.append({"name": row["name"], "job_ids": row.get("job_ids", []), "after": row.get("after", []),
                        "state": state})
        return out


def _depends(kind: str, after: list[str]) -> list[str]:
    """sbatch options that hold a job until the jobs ``after`` ended (a failed one cancels it under ``afterok``)."""
    return [f"--dependency={kind}:{':'.join(after)}", "--kill-on-invalid-dep=yes"] if after else []


def submit_with_report(chain: SlurmChain, steps: list[SlurmStep], report_command: list[str], report_path,
                       finished=None, report_after: str = "afterok", report_options: list[str] = (),
                       say=print) -> dict[str, str]:
    """What ``cli.py study --launcher slurm`` does, for either kind of study: check every step's resources, then
    that ``sbatch`` is there, submit the chain, print one line per step (its job, or that it finished earlier),
    then submit the job that writes the report once the chain's jobs ended (``report_after``)."""
    for step in steps:
        step.check()  # every step's resources before the first job is submitted
    require_sbatch(chain.sbatch)
    ids = chain.submit(steps, finished)
    for step in steps:
        say(f"{step.name}: {'finished, skipped' if step.name not in ids else 'job ' + ids[step.name]}")
    job = chain.submit_command("report", report_command, after=list(ids.values()), dependency=report_after,
                               options=list(report_options))
    say(f"report: job {job} writes {report_path}")
    return {**ids, "report": job}


def format_status(rows: list[dict]) -> str:
    lines = [f"{'step':<24} {'job':<16} {'after':<12} state"]
    for r in rows:
        lines.append(f"{r['name']:<24} {','.join(r['job_ids']) or '-':<16} {','.join(r['after']) or '-':<12} "
                     f"{r['state']}")
    return "\n".join(lines)
