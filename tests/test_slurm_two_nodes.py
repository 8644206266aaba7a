"""A real two-node SLURM job on one machine (slow): scripts/slurm/slurm_two_nodes.sh starts two slurmd, each in its own
network and UTS namespace (nodes n1, n2 with their own addresses), and slurm/train.sbatch / predict.sbatch run
`--nodes=2 --ntasks-per-node=1` jobs whose ranks talk gloo over that network. The 2-node fit, resumed from its
periodic step-3 checkpoint by a second job, equals one process with the global batch; 2-node sampling equals one
process bit for bit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import CONFIGS, ROOT, cli, load
from test_ddp_training import WEIGHT_ATOL, summed_learning_rate, weight_differences
from test_multinode import CALLBACKS, COMMON, fit_args, free_port, predict_args

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts" / "slurm" / "slurm_two_nodes.sh"
WAIT_S = 900


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None:
        pytest.skip("a two-node cluster on one machine needs root, ip (iproute2) and unshare")
    where = tmp_path_factory.mktemp("two_nodes")
    env = dict(os.environ, SLURM_TWO_NODES_ID=str(100 + os.getpid() % 100), SLURM_LOCAL_CTLD_PORT=str(free_port()))
    try:
        up = subprocess.run(["bash", SCRIPT, "up", where], env=env, capture_output=True, text=True, timeout=300)
        if up.returncode != 0:
            pytest.skip(f"could not bring up the two-node cluster: {up.stderr.strip()[-800:]}")
        yield dict(os.environ, SLURM_CONF=str(where / "etc" / "slurm.conf"), PYTHONPATH=str(ROOT))
    finally:
        subprocess.run(["bash", SCRIPT, "down", where], env=env, capture_output=True, timeout=180)


def run_job(env: dict, template: str, config: Path, out: Path, *args) -> None:
    cmd = ["sbatch", "--parsable", "--wait", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1",
           f"--output={out}", template, *map(str, args), "--trainer.strategy", "ddp", *COMMON]
    done = subprocess.run(cmd, cwd=ROOT, env=dict(env, CONFIG=str(config), PYTHON=sys.executable),
                          capture_output=True, text=True, timeout=WAIT_S)
    log = out.read_text() if out.exists() else ""
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stderr}\n{log[-4000:]}"
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log or template.endswith("predict.sbatch"), log[-2000:]


@pytest.mark.timeout(4 * WAIT_S)
def test_two_slurm_nodes_fit_resume_and_predict_like_one_process(tmp_path, two_nodes):
    (tmp_path / "callbacks.yaml").write_text(CALLBACKS)
    callbacks = ["--config", tmp_path / "callbacks.yaml"]
    first, nodes, one = tmp_path / "first", tmp_path / "nodes", tmp_path / "one"
    fit = lambda root, steps, *extra: fit_args(root, steps, 8)[3:] + [*callbacks, *extra]  # noqa: E731 - after --config
    run_job(two_nodes, "slurm/train.sbatch", CONFIGS / "digits/cfg.yaml", tmp_path / "fit.out", *fit(first, 4))
    assert (tmp_path / "fit.out").read_text().count("Initializing distributed") == 2  # one rank on each node
    run_job(two_nodes, "slurm/train.sbatch", CONFIGS / "digits/cfg.yaml", tmp_path / "resume.out",
            *fit(nodes, 6, "--ckpt_path", first / "checkpoints/step000003.ckpt"))
    cli(*fit_args(one, 6, 16), *callbacks, *COMMON)
    a, b = load(one / "checkpoints/last.ckpt"), load(nodes / "checkpoints/last.ckpt")
    assert a["global_step"] == b["global_step"] == 6
    for key in ("state_dict", "current_model_state"):
        real, noise = weight_differences(a, b, key)
        print(f"\n2 SLURM nodes (fit 3, resume to 6) vs 1 process: {key} max |diff| {real:.2e} "
              f"(noise-gradient {noise:.2e})")
        assert real <= WEIGHT_ATOL and noise <= summed_learning_rate(a)

    ckpt = nodes / "checkpoints/last.ckpt"
    run_job(two_nodes, "slurm/predict.sbatch", CONFIGS / "digits/sampling.yaml", tmp_path / "predict.out",
            *predict_args(ckpt, tmp_path / "sample_nodes")[3:])
    cli(*predict_args(ckpt, tmp_path / "sample_one"), *COMMON)
    shards = sorted(p.relative_to(tmp_path / "sample_one") for p in (tmp_path / "sample_one").glob("cfg_*/shard_*"))
    assert shards and shards == sorted(p.relative_to(tmp_path / "sample_nodes")
                                       for p in (tmp_path / "sample_nodes").glob("cfg_*/shard_*"))
    for rel in shards:
        with np.load(tmp_path / "sample_one" / rel) as x, np.load(tmp_path / "sample_nodes" / rel) as y:
            np.testing.assert_array_equal(x["images"], y["images"])
