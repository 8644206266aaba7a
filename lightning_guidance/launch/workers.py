"""Long-lived step workers: each imports Lightning once and then runs ``cli.py`` steps one after another in-process.

A fresh ``python -m lightning_guidance.cli`` per step spends about 8 CPU seconds importing torch, Lightning and the
suite before the step starts; the study's tiny preset has 83 steps. A worker (the study starts ``cli.py study
--serve-steps <run folder>``, a :class:`WorkerPool` of them) pays that once. Per step it

- resets the process-wide state a step can change to what it was before the first step (:class:`ProcessState`:
  environment, RNG states, torch threads and flags, warnings filters, logging, matplotlib, working folder), so a
  step's result does not depend on which worker ran it or after which step;
- points file descriptors 1 and 2 at the step's log (what Python, C extensions and child processes print);
- runs the CLI's own entry on the step's arguments (SIGTERM/SIGINT stop it at a safe point, as in a fresh process,
  with exit code ``128 + signal``) and answers with the exit code.

The protocol: one JSON request per line on the worker's stdin (``{"args": [...], "log": path}``), one JSON answer
per line on its stdout (``{"rc": int}``); the first line a worker writes is ``{"ready": pid}``. End of input ends it.

A worker dies with the study that started it (:func:`die_with_parent`): when the study ends, even by SIGKILL, the
worker gets SIGTERM (Linux's parent-death signal, and a thread that watches the parent's pid elsewhere), so the step it
runs stops at its next safe point; one that has not stopped after ``STOP_GRACE`` seconds is killed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path


# ---- inside a worker ---------------------------------------------------------------------------------------------
class ProcessState:
    """What a step can change for the whole process, captured once and put back before each step."""

    def __init__(self, threads: int | None = None):
        import numpy as np
        import torch

        self.threads = threads or torch.get_num_threads()
        self.environ = dict(os.environ)
        self.cwd = os.getcwd()
        self.sys_path, self.argv = list(sys.path), list(sys.argv)
        self.torch_rng = torch.get_rng_state()
        self.numpy_rng, self.python_rng = np.random.get_state(), random.getstate()
        self.deterministic = (torch.are_deterministic_algorithms_enabled(),
                              torch.is_deterministic_algorithms_warn_only_enabled())
        self.cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        self.dtype = torch.get_default_dtype()
        self.matmul_precision = torch.get_float32_matmul_precision()
        self.grad, self.anomaly = torch.is_grad_enabled(), torch.is_anomaly_enabled()
        self.warnings = list(warnings.filters)
        self.logging_disable = logging.root.manager.disable
        self.loggers = {name: self._logger_state(logging.getLogger(name or None))
                        for name in ["", *logging.root.manager.loggerDict]
                        if name == "" or isinstance(logging.root.manager.loggerDict[name], logging.Logger)}
        self.mpl = self._mpl_state()

    @staticmethod
    def _logger_state(logger: logging.Logger) -> tuple:
        return logger.level, list(logger.handlers), list(logger.filters), logger.propagate, logger.disabled

    @staticmethod
    def _mpl_state():
        if "matplotlib" not in sys.modules:
            return None
        import matplotlib

        return dict(matplotlib.rcParams)

    def restore(self) -> None:
        import numpy as np
        import torch

        os.environ.clear()
        os.environ.update(self.environ)
        os.chdir(self.cwd)
        sys.path[:], sys.argv[:] = self.sys_path, self.argv
        torch.set_rng_state(self.torch_rng)
        np.random.set_state(self.numpy_rng)
        random.setstate(self.python_rng)
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(self.deterministic[0], warn_only=self.deterministic[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = self.cudnn
        torch.set_default_dtype(self.dtype)
        torch.set_float32_matmul_precision(self.matmul_precision)
        torch.set_grad_enabled(self.grad)
        torch.autograd.set_detect_anomaly(self.anomaly)
        warnings.resetwarnings()  # also forgets which warnings were already shown once
        warnings.filters[:] = self.warnings
        logging.disable(self.logging_disable)
        for name, (level, handlers, filters, propagate, disabled) in self.loggers.items():
            logger = logging.getLogger(name or None)
            logger.setLevel(level)
            logger.handlers[:], logger.filters[:] = handlers, filters
            logger.propagate, logger.disabled = propagate, disabled
        if "matplotlib" in sys.modules:
            import matplotlib

            if "matplotlib.pyplot" in sys.modules:
                sys.modules["matplotlib.pyplot"].close("all")
            rc = self.mpl if self.mpl is not None else dict(matplotlib.rcParamsOrig)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecated keys in the full copy
                matplotlib.rcParams.update({k: v for k, v in rc.items() if k != "backend"})  # never switch backends


def run_step(entry, args: list[str], log: str | Path, state: ProcessState | None) -> int:
    """Run ``entry(args)`` (the CLI's main) with fds 1 and 2 on ``log``; its exit code (a raised error: 1, its
    traceback in the log)."""
    if state is not None:
        state.restore()
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "w") as f:
        os.dup2(f.fileno(), 1), os.dup2(f.fileno(), 2)
        try:
            entry(list(args))
            rc = 0
        except SystemExit as stop:
            code = stop.code
            if isinstance(code, str):
                print(code, file=sys.stderr)
            rc = code if isinstance(code, int) else (0 if code is None else 1)
        except KeyboardInterrupt:  # a second SIGINT: stop at once
            rc = 128 + signal.SIGINT
        except BaseException:  # noqa: BLE001 - a failed step is recorded, the worker goes on
            traceback.print_exc()
            rc = 1
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
    return rc


PARENT_PID = "LG_STUDY_PID"  # the study's pid, given to its workers
PAUSE = "LG_STUDY_PAUSE"  # tests only: see pause_for_tests
STOP_GRACE = 60.0  # seconds a worker whose study died has to stop its step before it is killed


def pause_for_tests(phase: str, stopped=lambda: False) -> None:
    """Tests only: with ``LG_STUDY_PAUSE=<phase>:<seconds>`` (phases: ``planning``, ``step``, ``report``) wait that
    long as the phase starts, or until ``stopped()``, after one line on stderr, so that a test can signal the study (or
    its worker) in that phase."""
    name, _, seconds = os.environ.get(PAUSE, "").partition(":")
    if name != phase:
        return
    sys.stderr.write(f"paused in {phase} for {seconds} s ({PAUSE})\n")
    sys.stderr.flush()
    end = time.monotonic() + float(seconds)
    while time.monotonic() < end and not stopped():
        time.sleep(0.05)


def die_with_parent(parent: int) -> None:
    """SIGTERM to this process when ``parent`` ends: Linux's ``PR_SET_PDEATHSIG``, and a daemon thread that watches
    the parent pid (other systems, and a parent that ended before the call); SIGKILL ``STOP_GRACE`` seconds later."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM after the kernel's changes nothing
        time.sleep(STOP_GRACE)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def serve(entry, threads: int | None = None) -> int:
    """The worker's loop (``cli.py study --serve-steps``): answer step requests from stdin until it closes."""
    parent = os.environ.get(PARENT_PID)
    if parent:
        die_with_parent(int(parent))
    import torch

    answers = os.fdopen(os.dup(1), "w", buffering=1)
    requests = os.fdopen(os.dup(0), "r")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0), os.dup2(devnull, 1)  # a step reads no input, and prints only into its log
    if threads:
        torch.set_num_threads(threads)
    # signals between steps (a stop that lands as a step ends): recorded, the step itself installs its own handler
    idle_signals: list[int] = []
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda signum, frame: idle_signals.append(signum))
    state = ProcessState(threads)
    try:
        answers.write(json.dumps({"ready": os.getpid()}) + "\n")
        for line in requests:
            request = json.loads(line)
            pause_for_tests("step", stopped=lambda: bool(idle_signals))
            if idle_signals:  # stopped before this step began: it does not start
                rc = 128 + idle_signals[0]
            else:
                rc = run_step(entry, request["args"], request["log"], state)
            answers.write(json.dumps({"rc": rc}) + "\n")
    except BrokenPipeError:  # the study is gone: nobody to answer
        return 128 + (idle_signals or [signal.SIGTERM])[0]
    return 0


# ---- in the caller -------------------------------------------------------------------------------------------------
class WorkerDied(RuntimeError):
    pass


class Worker:
    """One worker process: ``run`` sends it a step and waits for the exit code."""

    def __init__(self, command: list[str], env: dict, log: Path, keep_fds: tuple[int, ...] = ()):
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as err:
            # its own session: a Ctrl-C in the terminal reaches the steps once, through the study; it dies with the
            # study (PARENT_PID) and holds ``keep_fds`` (the run folder's lock) while it lives
            self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         text=True, bufsize=1, env={**env, PARENT_PID: str(os.getpid())},
                                         start_new_session=True, pass_fds=keep_fds)
        self.log = log
        self.busy = False
        self._answer()  # "ready": the imports are done

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            raise WorkerDied(f"the step worker (pid {self.proc.pid}) ended with exit code {rc}; see {self.log}")
        return json.loads(line)

    def run(self, args: list[str], log: Path) -> int:
        try:
            self.proc.stdin.write(json.dumps({"args": [str(a) for a in args], "log": str(log)}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            rc = self.proc.wait()
            raise WorkerDied(f"the step worker (pid {self.proc.pid}) ended with exit code {rc}; see {self.log}")
        return int(self._answer()["rc"])

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signum)
            except ProcessLookupError:
                pass

    def close(self, timeout: float = 60) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


class WorkerPool:
    """Up to ``size`` workers, started when first needed; a worker that dies is replaced by a fresh one."""

    def __init__(self, size: int, command: list[str], env: dict, log_dir: Path, keep_fds: tuple[int, ...] = ()):
        self.size, self.command, self.env, self.log_dir, self.keep_fds = size, command, env, log_dir, keep_fds
        self.idle: list[Worker] = []
        self.all: list[Worker] = []
        self._lock = threading.Condition()
        self._started = 0

    def acquire(self) -> Worker:
        with self._lock:
            while not self.idle and len(self.all) >= self.size:
                self._lock.wait()
            if self.idle:
                worker = self.idle.pop()
                worker.busy = True
                return worker
            self._started += 1
            number = self._started
            placeholder = object()
            self.all.append(placeholder)  # counts against the size while it starts
        try:
            worker = Worker(self.command, self.env, self.log_dir / f"worker-{number}.log", self.keep_fds)
        except BaseException:
            with self._lock:
                self.all.remove(placeholder)
                self._lock.notify()
            raise
        with self._lock:
            self.all[self.all.index(placeholder)] = worker
            worker.busy = True
        return worker

    def release(self, worker: Worker, alive: bool = True) -> None:
        with self._lock:
            worker.busy = False
            if alive and worker.proc.poll() is None:
                self.idle.append(worker)
            else:
                self.all.remove(worker)
            self._lock.notify()
        if not alive:
            worker.close(timeout=5)

    def run(self, args: list[str], log: Path) -> int:
        worker = self.acquire()
        try:
            rc = worker.run(args, log)
        except WorkerDied as died:
            with open(log, "a") as f:
                print(f"error: {died}", file=f)
            code = worker.proc.returncode
            self.release(worker, alive=False)
            return 128 - code if code is not None and code < 0 else 1  # killed by a signal: 128 + signal
        self.release(worker)
        return rc

    def signal(self, signum: int) -> None:
        """Forward a stop signal to every worker that is running a step."""
        with self._lock:
            busy = [w for w in self.all if isinstance(w, Worker) and w.busy]
        for worker in busy:
            worker.signal(signum)

    def close(self) -> None:
        with self._lock:
            workers = [w for w in self.all if isinstance(w, Worker)]
            self.all, self.idle = [], []
        for worker in workers:
            worker.close()
