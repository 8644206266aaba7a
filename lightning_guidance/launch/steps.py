"""Steps and their runner: a step is one ``cli.py fit | validate | test | predict`` call on a config built from shipped
configs plus edits; :class:`StepRunner` runs a set of them.

A step's config is the shipped YAML (several are merged in order, as ``--config a --config b`` would) with a few
values edited; the runner writes it to ``<run>/configs/<step>.yaml`` and calls ``cli.py <command> --config`` on it, so
every step can be re-run by hand. Edits name a value by its dotted path; ``[ClassName]`` picks the element of a list
of class specs whose class_path ends in that name
(``trainer.callbacks[ModelCheckpoint].init_args.every_n_train_steps``), and the value :data:`DELETE` removes it.

The runner:

- Each step is the CLI's own entry on the step's config, run in one of ``jobs`` long-lived worker processes
  (:mod:`.workers`) that import Lightning once (or here, one at a time, with ``in_process``); its output
  goes to ``logs/<step>.log``.
- A step is skipped when its marker (``steps/<step>.json``) records the same config and the same content digests
  (:func:`~..io.digests.file_digest`) of its inputs and product; a step whose config or inputs changed is re-run, and
  its old folder is renamed ``<folder>.stale-<UTC time>`` first (nothing is deleted); steps downstream of it then see
  a new input digest. A marker also records the commit of the code that made the product.
- ``fit`` steps pass ``--ckpt_path last`` (a killed training resumes), ``predict`` skips shards already written.
- SIGINT/SIGTERM are forwarded to the workers running a step, which stops at a safe point and is marked interrupted;
  the steps not started are not run. A worker dies with the study (a SIGKILL of the study stops its steps too).
- A failed step is marked failed, the steps that need it are marked blocked, every other step still runs.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import datetime as dt
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..io.atomic import atomic_write_text
from ..io.digests import file_digest
from .signals import on_signals, restore
from .workers import ProcessState, WorkerPool, run_step

DELETE = object()
DONE_STATES = ("done", "skipped")  # a step whose product is there and current


def study_command(*args: str) -> list[str]:
    """``cli.py study <args>`` in this interpreter (the step workers, the report job of a SLURM chain)."""
    return [sys.executable, "-m", "lightning_guidance.cli", "study", *args]


@dataclass
class Step:
    name: str
    section: str  # the key of the section that planned it
    command: str
    configs: list[str]
    edits: dict = field(default_factory=dict)
    needs: list[str] = field(default_factory=list)  # steps whose products this one reads
    product: str = ""  # the file whose existence (and digest) says the step finished
    resume: bool = False  # fit: --ckpt_path last (a killed run resumes)

    @property
    def out_dir(self) -> Path:
        return Path(self.product).parent

    def args(self, config: str | Path) -> list[str]:
        """The ``cli.py`` arguments that run it on its written config."""
        return [self.command, "--config", str(config), *(["--ckpt_path", "last"] if self.resume else [])]


# ---- editing configs ---------------------------------------------------------------------------------------------
_SELECTOR = re.compile(r"^(?P<key>[^\[]*)\[(?P<cls>[A-Za-z_][\w.]*)\]$")


def merge(base: dict, extra: dict) -> dict:
    """Deep merge (dicts merged key by key, anything else replaced): what repeated ``--config`` does."""
    out = copy.deepcopy(base)
    for k, v in (extra or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _child(node, part: str, path: str):
    m = _SELECTOR.match(part)
    if m:
        items = node.get(m["key"]) if m["key"] else node
        if not isinstance(items, list):
            raise KeyError(f"config edit {path}: {m['key']} is not a list")
        for i, item in enumerate(items):
            if isinstance(item, dict) and str(item.get("class_path", "")).split(".")[-1] == m["cls"]:
                return items, i
        raise KeyError(f"config edit {path}: no {m['cls']} in {m['key']}")
    if isinstance(node, list):
        return node, int(part)
    node.setdefault(part, {})
    return node, part


def apply_edits(config: dict, edits: dict) -> dict:
    out = copy.deepcopy(config)
    for path, value in edits.items():
        parts = re.findall(r"[^.\[]+(?:\[[^\]]+\])?", path)
        node = out
        for part in parts[:-1]:
            parent, key = _child(node, part, path)
            node = parent[key]
            if node is None:
                parent[key] = node = {}
        parent, key = _child(node, parts[-1], path)
        if value is DELETE:
            del parent[key]
        else:
            parent[key] = copy.deepcopy(value)
    return out


def step_config(step: Step) -> dict:
    config: dict = {}
    for path in step.configs:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"step {step.name}: config not found: {p}")
        config = merge(config, yaml.safe_load(p.read_text()) or {})
    return apply_edits(config, step.edits)


MARKS = {"done": "[green]✓", "failed": "[red]✗", "interrupted": "[red]■"}


def digest(path: str | Path) -> str | None:
    """The content digest of a file, or None when there is none."""
    return file_digest(path) if Path(path).is_file() else None


class StepRunner:
    def __init__(self, run_dir: Path, steps: dict[str, Step], jobs: int = 1, in_process=None, console=None,
                 threads: int | None = None, code: dict | None = None, keep_fds: tuple[int, ...] = ()):
        self.run_dir, self.steps = Path(run_dir), steps
        self.keep_fds = keep_fds  # held by the workers while they live (the run folder's lock)
        self.jobs = 1 if in_process else max(1, jobs)
        self.in_process, self.threads, self.console = in_process, threads, console
        self.code = code or {}  # recorded in each marker: which code produced the step's product
        self.status: dict[str, str] = {}
        self.seconds: dict[str, float] = {}
        self.interrupted: int | None = None
        self.pool: WorkerPool | None = None  # started by run()
        self._state: ProcessState | None = None  # in_process: the state each step starts from

    # -- markers
    def marker_path(self, step: Step) -> Path:
        return self.run_dir / "steps" / f"{step.name}.json"

    def write_config(self, step: Step) -> Path:
        """Write the step's config to ``configs/<step>.yaml`` (unless it holds that already)."""
        text = yaml.safe_dump(step_config(step), sort_keys=False)
        path = self.run_dir / "configs" / f"{step.name}.yaml"
        if not path.is_file() or path.read_text() != text:
            atomic_write_text(path, text)
        return path

    def identity(self, step: Step, config: Path) -> dict:
        return {"config_sha256": file_digest(config),
                "inputs": {self.steps[n].product: digest(self.steps[n].product) for n in step.needs}}

    def is_current(self, step: Step, ident: dict) -> tuple[bool, bool]:
        """(finished and still valid, a marker exists but is stale)."""
        path = self.marker_path(step)
        if not path.is_file():
            return False, False
        marker = json.loads(path.read_text())
        same = (marker.get("config_sha256") == ident["config_sha256"] and marker.get("inputs") == ident["inputs"]
                and marker.get("product_sha256") is not None and marker["product_sha256"] == digest(step.product))
        return same, not same

    def move_aside(self, step: Step) -> None:
        """Rename the folder the step owns (a fit's root, a predict's output; a test shares its sample's)."""
        home = Path(step.edits["trainer.default_root_dir"]) if step.command == "fit" else \
            step.out_dir if step.command == "predict" else None
        if home is not None and home.exists():
            target = home.with_name(f"{home.name}.stale-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}")
            home.rename(target)
            self.say(f"  {step.name}: config or inputs changed; kept the old outputs as {target}")

    def prepare(self, step: Step) -> tuple[Path, dict] | None:
        """Write the step's config; return it and its identity, or None when the step is finished and current."""
        path = self.write_config(step)
        ident = self.identity(step, path)
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
            marker = {**ident, "product": step.product, "product_sha256": digest(step.product),
                      "seconds": round(seconds, 1), "finished": dt.datetime.now(dt.timezone.utc).isoformat(),
                      **self.code}
            atomic_write_text(self.marker_path(step), json.dumps(marker, indent=2))
        else:
            self.status[step.name] = "failed"
            if rc == 0:
                self.say(f"  {step.name}: exited 0 but did not write {step.product}")

    # -- execution
    def say(self, text: str) -> None:
        (self.console.print if self.console is not None else print)(text)

    def launch(self, step: Step, config: Path) -> int:
        """Run one step (in a worker, or here with ``in_process``); its exit code."""
        log = self.run_dir / "logs" / f"{step.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        if self.in_process:
            return run_step(self.in_process, step.args(config), log, self._state)
        return self.pool.run(step.args(config), log)

    def start_pool(self) -> WorkerPool:
        """``jobs`` workers (started as steps need them), each ``cli.py study --serve-steps`` with ``threads``."""
        env, command = dict(os.environ), study_command("--serve-steps", str(self.run_dir))
        if self.threads:  # steps running side by side on a CPU: no more threads than cores
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
            command += ["--threads", str(self.threads)]
        return WorkerPool(self.jobs, command, env, self.run_dir / "logs", self.keep_fds)

    def forward(self, signum: int, _frame=None) -> None:
        self.interrupted = signum
        if self.pool is not None:
            self.pool.signal(signum)

    def _start(self, name: str, pool: cf.Executor, running: dict, progress, task) -> None:
        """Start one runnable step (or settle it: failed before starting, or skipped)."""
        step = self.steps[name]
        try:
            prepared = self.prepare(step)
        except Exception as err:  # noqa: BLE001 - a bad config fails its step only
            self.status[name] = "failed"
            self.say(f"[red]✗ {step.section}: {name} failed before starting: {err}")
            return self._advance(progress, task)
        if prepared is None:
            self.status[name] = "skipped"
            self.say(f"[dim]↷ {step.section}: {name} finished earlier, still valid")
            return self._advance(progress, task)
        path, ident = prepared
        if self.in_process:  # Lightning in the main thread, one step at a time
            rc, seconds = self._timed(step, path)
            return self._done(step, ident, rc, seconds, progress, task)
        running[name] = (pool.submit(self._timed, step, path), ident)
        if progress is not None:
            progress.update(task, description=f"steps (running: {', '.join(running)})")

    def run(self, progress=None) -> dict[str, str]:
        task = progress.add_task("steps", total=len(self.steps)) if progress is not None else None
        pending, running = list(self.steps), {}
        old = on_signals(self.forward)
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
                        needs = [self.status.get(n) for n in self.steps[name].needs]
                        if any(s in ("failed", "blocked", "interrupted") for s in needs):
                            self.status[name] = "blocked"
                            pending.remove(name)
                            self.say(f"[yellow]⊘ {self.steps[name].section}: {name} blocked (an input step failed)")
                            self._advance(progress, task)
                        elif all(s in DONE_STATES for s in needs):
                            pending.remove(name)
                            self._start(name, pool, running, progress, task)
                    if self.interrupted is not None and not running:
                        self.status.update(dict.fromkeys(pending, "not run (interrupted)"))
                        break
                    if not running:
                        if pending and not any(all(self.status.get(n) in DONE_STATES for n in self.steps[p].needs)
                                               for p in pending):
                            raise RuntimeError(f"study plan cannot proceed: {pending}")  # a planning bug
                        continue
                    done, _ = cf.wait([f for f, _ in running.values()], timeout=0.5, return_when=cf.FIRST_COMPLETED)
                    for name in [n for n, (f, _) in running.items() if f in done]:
                        fut, ident = running.pop(name)
                        self._done(self.steps[name], ident, *fut.result(), progress, task)
        finally:
            if self.pool is not None:
                self.pool.close()
                self.pool = None
            if self._state is not None:
                self._state.restore()  # the caller's process as it was
            restore(old)
        return self.status

    def adopt_products(self) -> dict[str, str]:
        """Run nothing: a step whose product exists is done (with the seconds its marker recorded), the others not
        run (a report rebuilt from what the steps wrote)."""
        self.status = {n: "done" if Path(s.product).is_file() else "not run" for n, s in self.steps.items()}
        for name, step in self.steps.items():
            marker = self.marker_path(step)
            if name not in self.seconds and self.status[name] == "done" and marker.is_file():
                self.seconds[name] = float(json.loads(marker.read_text()).get("seconds", 0.0))
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
        extra = "" if state == "done" else f" (log: {self.run_dir / 'logs' / (step.name + '.log')})"
        self.say(f"{MARKS.get(state, '?')} {step.section}: {step.name} {state} in {seconds:.0f} s{extra}")
        self._advance(progress, task)

    @staticmethod
    def _advance(progress, task) -> None:
        if progress is not None:
            progress.advance(task)
