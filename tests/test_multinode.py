"""Two nodes, launched the way a cluster launches them: one process per "node" on localhost, each told its place by
the environment (MASTER_ADDR=127.0.0.1, MASTER_PORT, NODE_RANK, LOCAL_RANK, WORLD_SIZE: what Lightning's
LightningEnvironment reads), `--trainer.num_nodes 2 --trainer.devices 1 --trainer.strategy ddp`, gloo.

They fit 4 steps with a periodic checkpoint at step 3, a second launch resumes from that checkpoint (mid-epoch) to
step 6, and they sample; the weights equal one process trained 6 steps straight with the global batch (tolerances of
test_ddp_training), and the samples equal one process's from the same checkpoint bit for bit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import CONFIGS, ROOT, cli, load
from test_ddp_training import WEIGHT_ATOL, summed_learning_rate, weight_differences

TIMEOUT_S = 600  # one launch; generous: a loaded 2-core machine takes minutes to start two processes
TINY = ["--model.init_args.net.init_args.model_channels", "8", "--model.init_args.net.init_args.channel_mult", "[1]"]
COMMON = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
CALLBACKS = """
trainer:
  callbacks:
    - {class_path: lightning_guidance.callbacks.ema.EMA, init_args: {decay: 0.999}}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {filename: "step{step:06d}", auto_insert_metric_name: false, save_last: true, save_top_k: -1,
                  every_n_train_steps: 3}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_nodes(*args, num_nodes: int = 2) -> None:
    """One `cli.py` process per node, started together with the node's environment; all must exit 0."""
    cmd = [sys.executable, "-m", "lightning_guidance.cli", *map(str, args), *COMMON, "--trainer.num_nodes",
           str(num_nodes), "--trainer.devices", "1", "--trainer.strategy", "ddp"]
    port = free_port()
    procs = []
    for node in range(num_nodes):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK=str(node), LOCAL_RANK="0",
                   WORLD_SIZE=str(num_nodes), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for p in procs:  # no node outlives the test
            if p.poll() is None:
                p.kill()
                p.wait()
    for node, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"node {node} of {' '.join(cmd)} failed:\n{out[-4000:]}"


def fit_args(root: Path, steps: int, batch: int) -> list:
    return ["fit", "--config", CONFIGS / "digits/cfg.yaml", "--trainer.default_root_dir", root,
            "--trainer.max_steps", steps, "--trainer.log_every_n_steps", 1, "--data.init_args.batch_size", batch,
            "--trainer.check_val_every_n_epoch", "null", "--trainer.val_check_interval", 1000, *TINY]


def predict_args(ckpt: Path, out: Path) -> list:
    return ["predict", "--config", CONFIGS / "digits/sampling.yaml", "--trainer.default_root_dir", out,
            "--model.init_args.checkpoint", ckpt, "--model.init_args.output_dir", out,
            "--model.init_args.sweep.values", "[3.0]", "--model.init_args.samples_per_class", 2,
            "--model.init_args.shard_size", 8, "--model.init_args.sampler_kwargs", "{num_steps: 3}"]


@pytest.mark.slow  # 1.5 min; 2-process DDP fit/resume/predict stays in the default suite (test_ddp_training, test_ddp)
@pytest.mark.timeout(4 * TIMEOUT_S)
def test_two_nodes_fit_resume_and_predict_like_one_process(tmp_path):
    (tmp_path / "callbacks.yaml").write_text(CALLBACKS)
    callbacks = ["--config", tmp_path / "callbacks.yaml"]
    first, nodes, one = tmp_path / "first", tmp_path / "nodes", tmp_path / "one"
    run_nodes(*fit_args(first, 4, 8), *callbacks)
    periodic = first / "checkpoints/step000003.ckpt"
    assert load(periodic)["global_step"] == 3
    run_nodes(*fit_args(nodes, 6, 8), *callbacks, "--ckpt_path", periodic)  # resume mid-epoch, on both nodes
    cli(*fit_args(one, 6, 16), *callbacks, *COMMON)
    a, b = load(one / "checkpoints/last.ckpt"), load(nodes / "checkpoints/last.ckpt")
    assert a["global_step"] == b["global_step"] == 6
    for key in ("state_dict", "current_model_state"):
        real, noise = weight_differences(a, b, key)
        print(f"\n2 nodes (fit 3, resume to 6) vs 1 process: {key} max |diff| {real:.2e} (noise-gradient {noise:.2e})")
        assert real <= WEIGHT_ATOL and noise <= summed_learning_rate(a)

    ckpt = nodes / "checkpoints/last.ckpt"
    run_nodes(*predict_args(ckpt, tmp_path / "sample_nodes"))
    cli(*predict_args(ckpt, tmp_path / "sample_one"), *COMMON)
    shards = sorted(p.relative_to(tmp_path / "sample_one") for p in (tmp_path / "sample_one").glob("cfg_*/shard_*.npz"))
    assert shards == sorted(p.relative_to(tmp_path / "sample_nodes")
                            for p in (tmp_path / "sample_nodes").glob("cfg_*/shard_*.npz"))
    assert len(shards) == 3  # 20 samples in shards of 8
    for rel in shards:
        with np.load(tmp_path / "sample_one" / rel) as x, np.load(tmp_path / "sample_nodes" / rel) as y:
            np.testing.assert_array_equal(x["images"], y["images"])
            np.testing.assert_array_equal(x["sample_ids"], y["sample_ids"])
