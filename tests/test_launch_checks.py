"""Bad resources get one clear line before anything starts: devices beyond the machine, num_nodes that contradict the
environment that launched the process (SLURM, or a launcher's MASTER_ADDR/NODE_RANK/WORLD_SIZE)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import CONFIGS, ROOT
from lightning_guidance.launch.resources import check_trainer_resources

CLUSTER = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "LOCAL_RANK": "0"}


@pytest.mark.parametrize("devices, num_nodes, env, message", [
    (os.cpu_count() + 1, 1, {}, f"this machine has {os.cpu_count()} CPU cores"),
    (1, 2, {}, "nothing launched this process as one of 2 nodes"),
    (1, 2, {**CLUSTER, "NODE_RANK": "0", "WORLD_SIZE": "4"}, "WORLD_SIZE=4"),
    (1, 2, {**CLUSTER, "NODE_RANK": "2", "WORLD_SIZE": "2"}, "NODE_RANK=2"),
    (1, 2, {"SLURM_STEP_ID": "0", "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "1"}, "SLURM gave this step 1 node"),
    (2, 1, {"SLURM_STEP_ID": "0", "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "1"}, "starts 1 task(s) per node"),
])
def test_inconsistent_resources_are_named(devices, num_nodes, env, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_trainer_resources("cpu", devices, num_nodes, env)


@pytest.mark.parametrize("devices, num_nodes, env", [
    (1, 1, {}),
    ("auto", 1, {}),
    (1, 2, {**CLUSTER, "NODE_RANK": "1", "WORLD_SIZE": "2"}),
    (1, 2, {"SLURM_STEP_ID": "0", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "1"}),
])
def test_consistent_resources_pass(devices, num_nodes, env):
    check_trainer_resources("cpu", devices, num_nodes, env)


def test_the_console_says_it_in_one_line_before_anything_starts(tmp_path):
    root = tmp_path / "run"
    cmd = [sys.executable, "cli.py", "fit", "--config", str(CONFIGS / "digits/cfg.yaml"), "--trainer.accelerator",
           "cpu", "--trainer.devices", str(os.cpu_count() + 3), "--trainer.default_root_dir", str(root)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if not k.startswith("SLURM_")})
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"--trainer.devices {os.cpu_count() + 3}" in lines[0], done.stderr[-2000:]
    assert not root.exists()  # nothing started: no logs, no checkpoints
