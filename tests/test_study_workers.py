"""The study's step workers (launch/workers.py): a step run in a long-lived worker after another step writes the same
bytes as in a fresh ``cli.py`` process; the state a step can change is put back before the next; SIGTERM to the study
stops the step a worker is running at a safe point (no worker outlives the study) and a re-run resumes it."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import CONFIGS, ROOT, load
from subprocess_cli import cli_env, running_with, wait_until

from lightning_guidance.io.digests import file_digest
from lightning_guidance.launch.steps import StepRunner
from lightning_guidance.launch.steps import Step
from lightning_guidance.study.presets import get_preset
from lightning_guidance.study.sections import plan_study
from lightning_guidance.launch.workers import ProcessState


def test_process_state_puts_back_what_a_step_changes(tmp_path):
    logger = logging.getLogger("lightning.pytorch")
    state = ProcessState(threads=1)
    environ = dict(os.environ)  # earlier in-process fits of the suite may have set PL_GLOBAL_SEED already
    before = (torch.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate(),
              logger.level, list(logger.handlers), list(warnings.filters), torch.get_default_dtype(), os.getcwd())
    # what a step may leave behind
    os.environ["PL_GLOBAL_SEED"] = str(int(os.environ.get("PL_GLOBAL_SEED", "0")) + 1)
    torch.manual_seed(5), np.random.seed(5), random.seed(5), torch.rand(3)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_default_dtype(torch.float64)
    torch.set_float32_matmul_precision("medium")
    warnings.filterwarnings("ignore", message="leaked filter")
    logger.setLevel(logging.ERROR)
    logger.addHandler(logging.NullHandler())
    os.chdir(tmp_path)
    try:
        state.restore()
        assert dict(os.environ) == environ
        assert torch.equal(torch.get_rng_state(), before[0])
        assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]
        assert torch.get_num_threads() == 1
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.get_default_dtype() == before[6] == torch.float32
        assert torch.get_float32_matmul_precision() == state.matmul_precision
        assert list(warnings.filters) == before[5]
        assert logger.level == before[3] and logger.handlers == before[4]
        assert os.getcwd() == before[7]
    finally:
        state.restore()
        os.chdir(ROOT)


@pytest.mark.timeout(900)
def test_a_step_after_another_in_one_worker_writes_what_a_fresh_process_writes(tmp_path):
    """micro preset: toy1d-mu1-cfg, then toy1d-mu1-linear in the same worker; the linear classifier's checkpoint is
    byte for byte the one a fresh ``python -m lightning_guidance.cli fit`` writes from the same config."""
    run_dir = tmp_path / "run"
    plan = plan_study(get_preset("micro"), run_dir, CONFIGS, ["toy1d"])
    first, second = plan.steps["toy1d-mu1-cfg"], plan.steps["toy1d-mu1-linear"]
    assert not second.needs  # it can run in either order
    runner = StepRunner(run_dir, {s.name: s for s in (first, second)}, jobs=1, threads=1)
    status = runner.run()
    assert status == {first.name: "done", second.name: "done"}, (run_dir / "logs").iterdir()
    assert sorted(p.name for p in (run_dir / "logs").glob("worker-*.log")) == ["worker-1.log"]  # one worker, both
    in_worker = file_digest(second.product)
    marker = json.loads(runner.marker_path(second).read_text())
    assert marker["product_sha256"] == in_worker

    home = Path(second.edits["trainer.default_root_dir"])
    home.rename(home.with_name("in-worker"))  # the same paths for the fresh run (they are in the checkpoint)
    fresh = subprocess.run([sys.executable, "-m", "lightning_guidance.cli", *second.args(
        run_dir / "configs" / f"{second.name}.yaml")], cwd=ROOT, env=cli_env(), capture_output=True,
        text=True, timeout=600)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert file_digest(second.product) == in_worker
    assert load(second.product)["global_step"] == get_preset("micro").toy_classifier_steps  # it really trained


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc to look for orphaned workers")
@pytest.mark.timeout(1200)
def test_sigterm_stops_the_step_in_its_worker_and_a_rerun_resumes(tmp_path):
    run_dir = tmp_path / "run"
    root = run_dir / "cfg"
    slow = tmp_path / "slow.yaml"
    slow.write_text(
        "trainer:\n  callbacks:\n    - {class_path: throttle.Throttle, init_args: {seconds: 0.1}}\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args: {save_last: true, every_n_train_steps: 5}\n")
    step = Step("train", "s", "fit", [str(CONFIGS / "digits/cfg.yaml"), str(slow)],
                {"trainer.default_root_dir": str(root), "trainer.max_steps": 60, "trainer.enable_progress_bar": False,
                 "model.init_args.net.init_args.model_channels": 8, "model.init_args.net.init_args.channel_mult": [1],
                 "data.init_args.batch_size": 16}, product=str(root / "checkpoints" / "last.ckpt"), resume=True)
    spec = tmp_path / "step.yaml"
    spec.write_text(yaml.safe_dump({"run_dir": str(run_dir), "step": step.__dict__}))
    driver = ("import sys, yaml; from pathlib import Path; from lightning_guidance.launch.steps import Step; "
              "from lightning_guidance.launch.steps import StepRunner; spec = yaml.safe_load(open(sys.argv[1])); "
              "step = Step(**spec['step']); runner = StepRunner(Path(spec['run_dir']), {step.name: step}, jobs=2, "
              "threads=1); status = runner.run(); print('status', status[step.name], flush=True); "
              "sys.exit(128 + runner.interrupted if runner.interrupted else 0)")
    log = tmp_path / "study.log"
    proc = subprocess.Popen([sys.executable, "-c", driver, str(spec)], cwd=ROOT, env=cli_env(), stdout=log.open("w"),
                            stderr=subprocess.STDOUT)
    wait_until(lambda: (root / "checkpoints" / "last.ckpt").exists(), proc, 600, "the first checkpoint", log)
    workers = running_with(f"--serve-steps\0{run_dir}")
    assert len(workers) == 1  # one step: one worker started
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert rc == 128 + signal.SIGTERM, log.read_text()[-3000:]
    assert "status interrupted" in log.read_text()
    assert not running_with(f"--serve-steps\0{run_dir}"), "a worker outlived the study"
    assert "stopped by SIGTERM" in (run_dir / "logs" / "train.log").read_text()
    stopped_at = load(root / "checkpoints" / "last.ckpt")["global_step"]
    assert 5 <= stopped_at < 60
    assert not (run_dir / "steps" / "train.json").exists()

    again = subprocess.run([sys.executable, "-c", driver, str(spec)], cwd=ROOT, env=cli_env(), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0 and "status done" in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]
    assert load(root / "checkpoints" / "last.ckpt")["global_step"] == 60
    assert json.loads((run_dir / "steps" / "train.json").read_text())["product_sha256"] == file_digest(step.product)
