"""slurm/train.sbatch on a real one-host SLURM: 2 srun tasks (DDP, gloo), USR1 to the batch script (what
``--signal=B:USR1@N`` sends before the time limit), requeue, resume: the run ends exactly like a straight run. And
pre-emption: SIGTERM to both tasks (``scancel --signal=TERM``) stops them at one checkpoint; a resubmit resumes.

The cluster comes from scripts/slurm/slurm_local.sh (installs slurm-wlm + munge with apt-get when missing; needs root) and
is torn down after. Oracle: the same fit run straight through on the same cluster with the same world size.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import CONFIGS, ROOT, load

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts" / "slurm" / "slurm_local.sh"
MAX_STEPS = 120
EVERY = 20  # periodic checkpoint interval (steps)
SIGNAL_AFTER = 40  # USR1 once this step's checkpoint exists
# Batch 16 on 2 ranks: 45 steps per epoch, so the resume falls in mid-epoch and crosses an epoch boundary after.
FIT_ARGS = ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.max_steps", MAX_STEPS,
            "--trainer.enable_progress_bar", "false", "--trainer.check_val_every_n_epoch", "1000",
            "--model.init_args.net.init_args.model_channels", "8", "--model.init_args.net.init_args.channel_mult", "[1]",
            "--data.init_args.batch_size", "16"]
CALLBACKS = f"""
trainer:
  callbacks:
    - {{class_path: lightning_guidance.callbacks.ema.EMA, init_args: {{decay: 0.999}}}}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{filename: "step{{step:06d}}", auto_insert_metric_name: false, save_last: true, save_top_k: -1,
                  every_n_train_steps: {EVERY}}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    """Environment (SLURM_CONF) of a one-host cluster brought up for this module, torn down after it."""
    if shutil.which("sbatch") is None and (os.geteuid() != 0 or shutil.which("apt-get") is None):
        pytest.skip("sbatch is not on PATH and SLURM cannot be installed here (scripts/slurm/slurm_local.sh needs root "
                    "and apt-get)")
    where = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, SLURM_LOCAL_CTLD_PORT=str(_free_port()), SLURM_LOCAL_SLURMD_PORT=str(_free_port()))
    try:
        up = subprocess.run(["bash", SCRIPT, "up", where], env=env, capture_output=True, text=True, timeout=300,
                            check=False)
        if up.returncode != 0:
            pytest.skip(f"could not bring up a local SLURM cluster: {up.stderr.strip()[-600:]}")
        yield dict(os.environ, SLURM_CONF=str(where / "etc" / "slurm.conf"), PYTHONPATH=str(ROOT))
    finally:
        subprocess.run(["bash", SCRIPT, "down", where], env=env, capture_output=True, timeout=120, check=False)


def _submit(env, run: Path, *sbatch_opts: str) -> str:
    run.mkdir(parents=True)
    (run / "callbacks.yaml").write_text(CALLBACKS)
    cmd = ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
           f"--output={run / 'job.out'}", *sbatch_opts, "slurm/train.sbatch",
           "--config", run / "callbacks.yaml", "--trainer.default_root_dir", run / "root", *FIT_ARGS]
    env = dict(env, CONFIG=str(CONFIGS / "digits" / "cfg.yaml"), PYTHON=sys.executable)
    done = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    assert done.returncode == 0, f"sbatch failed: {done.stderr}\n{_log(run)}"
    return done.stdout.strip().split(";")[0]


def _log(run: Path) -> str:
    path = run / "job.out"
    return "job log:\n" + path.read_text()[-4000:] if path.exists() else "(no job log)"


def _job(env, job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True, timeout=30,
                         check=False).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _wait_for(condition, timeout_s: float, what: str, run: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{_log(run)}")
        time.sleep(0.25)


def _step_files(run: Path) -> dict[int, Path]:
    return {int(p.stem[4:]): p for p in (run / "root" / "checkpoints").glob("step*.ckpt")}


def _assert_same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    for key in ("state_dict", "current_model_state"):  # EMA and raw weights
        assert a[key].keys() == b[key].keys()
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name} differs from the straight run"
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for name, value in sa[i].items():
            assert torch.equal(value, sb[i][name]), f"optimizer state {i}.{name} differs from the straight run"


@pytest.fixture(scope="module")
def straight(slurm_env, tmp_path_factory) -> Path:
    """The reference: the same job run straight through on the same cluster and world size."""
    run = tmp_path_factory.mktemp("slurm-straight") / "straight"
    _submit(slurm_env, run, "--wait")  # --wait: sbatch returns when the job has ended
    assert "srun ended with status 0" in (run / "job.out").read_text(), _log(run)
    assert load(run / "root" / "checkpoints" / "last.ckpt")["global_step"] == MAX_STEPS
    return run


def _metrics_rows(run: Path) -> list[dict]:
    with (run / "root" / "logs" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_requeued_fit_resumes_exactly(slurm_env, straight, tmp_path):
    env = slurm_env
    reference = load(straight / "root" / "checkpoints" / "last.ckpt")

    run = tmp_path / "requeued"
    job = _submit(env, run)
    _wait_for(lambda: SIGNAL_AFTER in _step_files(run), 600, f"the step-{SIGNAL_AFTER} checkpoint", run)
    assert _job(env, job)["JobState"] == "RUNNING", _log(run)
    signalled_at = max(_step_files(run))
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=env, check=True, timeout=30)
    _wait_for(lambda: _job(env, job)["JobState"] == "PENDING", 120, "the job to be requeued", run)
    assert _job(env, job)["Restarts"] == "1"

    # the first run is over: its newest checkpoint is what the restart must resume from; SLURM ended it with SIGTERM,
    # so both tasks saved the checkpoint of the step they were at (not only the periodic one before it)
    resume_from = load(run / "root" / "checkpoints" / "last.ckpt")["global_step"]
    assert signalled_at <= resume_from < MAX_STEPS
    assert "stopped by SIGTERM" in _log(run), _log(run)
    released = time.time()
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], env=env, check=True, timeout=30)
    _wait_for(lambda: _job(env, job)["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 600,
              "the restarted job to end", run)
    assert _job(env, job)["JobState"] == "COMPLETED", _log(run)

    log = (run / "job.out").read_text()
    assert "SLURM_RESTART_COUNT=0" in log and "SLURM_RESTART_COUNT=1" in log, _log(run)
    assert "USR1: requeueing job" in log, _log(run)
    assert f"Restored all states from the checkpoint at {run / 'root' / 'checkpoints' / 'last.ckpt'}" in log
    # the restart trained on from resume_from, not from 0: checkpoints up to it are the first run's files (the
    # periodic ones and the stop checkpoint), later ones the restart's
    steps = _step_files(run)
    assert sorted(set(steps) - {resume_from}) == list(range(EVERY, MAX_STEPS + 1, EVERY))
    for step, path in steps.items():
        assert (path.stat().st_mtime < released) == (step <= resume_from), (step, resume_from)
    final = load(run / "root" / "checkpoints" / "last.ckpt")
    assert final["global_step"] == MAX_STEPS
    _assert_same_training_state(final, reference)
    print(f"USR1 after step {signalled_at}, resumed from step {resume_from}")


def test_sigterm_to_both_tasks_stops_them_at_one_checkpoint_and_a_resubmit_resumes_exactly(slurm_env, straight,
                                                                                           tmp_path):
    """Pre-emption as a cluster does it: ``scancel --signal=TERM <job>`` signals every task of the 2-task job. Each
    task's handler only records it; at the next batch end the ranks agree (one collective), save one checkpoint of
    that step together and both exit 143 (srun and the job end with it). Submitted again, the job resumes from that
    checkpoint and ends exactly like the straight run, every metrics row once (no step trained twice)."""
    env = slurm_env
    run = tmp_path / "preempted"
    job = _submit(env, run)
    _wait_for(lambda: SIGNAL_AFTER in _step_files(run), 600, f"the step-{SIGNAL_AFTER} checkpoint", run)
    assert _job(env, job)["JobState"] == "RUNNING", _log(run)
    subprocess.run(["scancel", "--signal=TERM", job], env=env, check=True, timeout=30)
    _wait_for(lambda: _job(env, job)["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 300,
              "the signalled job to end", run)
    log = (run / "job.out").read_text()
    assert "srun ended with status 143" in log, _log(run)
    assert log.count("stopped by SIGTERM") == 2, _log(run)  # both tasks, one line each
    stopped = load(run / "root" / "checkpoints" / "last.ckpt")["global_step"]
    assert SIGNAL_AFTER <= stopped < MAX_STEPS, stopped
    assert max(int(r["step"]) for r in _metrics_rows(run)) < stopped  # nothing logged past the stop checkpoint

    again = subprocess.run(["sbatch", "--parsable", "--wait", "--nodes=1", "--ntasks-per-node=2",
                            "--cpus-per-task=1", f"--output={run / 'job.out'}", "slurm/train.sbatch", "--config",
                            str(run / "callbacks.yaml"), "--trainer.default_root_dir", str(run / "root"),
                            *[str(a) for a in FIT_ARGS]], cwd=ROOT,
                           env=dict(env, CONFIG=str(CONFIGS / "digits" / "cfg.yaml"), PYTHON=sys.executable),
                           capture_output=True, text=True, timeout=900, check=False)
    assert again.returncode == 0, f"{again.stderr}\n{_log(run)}"
    assert (run / "job.out").read_text().rstrip().endswith("srun ended with status 0"), _log(run)
    assert f"Restored all states from the checkpoint at {run / 'root' / 'checkpoints' / 'last.ckpt'}" in \
        (run / "job.out").read_text()
    final = load(run / "root" / "checkpoints" / "last.ckpt")
    _assert_same_training_state(final, load(straight / "root" / "checkpoints" / "last.ckpt"))
    assert final["loops"] == load(straight / "root" / "checkpoints" / "last.ckpt")["loops"]
    assert _metrics_rows(run) == _metrics_rows(straight)
    print(f"SIGTERM after step {SIGNAL_AFTER}: stopped at step {stopped}")
