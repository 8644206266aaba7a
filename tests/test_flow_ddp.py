"""The post-processor under DDP on CPU (2 spawned gloo processes) through the real CLI: the same neighbour table and
the same post-processed shards as 1 process, one set of checkpoints, and an exact resume. The ranks are spawned from
the test's process (helpers.cli_on_two_processes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import cli, cli_on_two_processes, load
from test_flow_cli import PERIODIC_CHECKPOINTS, TRAIN_SCALES, UNSEEN_SCALES, flow_args, flow_inputs  # noqa: F401

from lightning_guidance.data.digits import DigitsDataModule
from lightning_guidance.data.generated import read_generated
from lightning_guidance.flow.neighbours import IndexSettings, top_k_neighbours


def run_cli(*args) -> None:
    cli_on_two_processes(*args, "--trainer.enable_progress_bar", "false")


def _periodic(tmp_path, every: int):
    path = tmp_path / f"every{every}.yaml"
    path.write_text(PERIODIC_CHECKPOINTS.replace("every_n_train_steps: 3", f"every_n_train_steps: {every}"))
    return ("--config", path)


def _table(folder):
    (path,) = folder.glob("topk_*.npz")
    with np.load(path) as z:
        return path.name, z["distances"], z["indices"]


@pytest.mark.timeout(1800)  # three CLI runs, two of them spawning 2 processes
def test_two_processes_give_the_same_neighbours_and_shards_and_checkpoint_once(flow_inputs, tmp_path):  # noqa: F811
    _, _, train, unseen = flow_inputs
    every = _periodic(tmp_path, 2)
    one, two = tmp_path / "one", tmp_path / "two"
    run_cli("fit", *flow_args(two, train, unseen, "--trainer.max_steps", 4, *every))
    # the table one process computes: every generated sample against the real digits of its class, in pixels
    gen = read_generated([str(train / f"cfg_{s}") for s in TRAIN_SCALES])
    dm = DigitsDataModule(batch_size=128, val_fraction=0.2, seed=0)
    dm.setup("fit")
    real_x, real_y = dm.train_set.tensors
    d1, i1 = top_k_neighbours(gen.samples.flatten(1).numpy(), real_x.flatten(1).numpy(), 5, IndexSettings(),
                              gen.labels.numpy(), real_y.numpy(), same_class=True)
    _, d2, i2 = _table(two / "neighbours")
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
    # checkpoints written once (by rank 0), at steps 2 and 4
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["last.ckpt", "step000002.ckpt", "step000004.ckpt"]
    assert load(two / "checkpoints" / "last.ckpt")["global_step"] == 4

    ckpt = two / "checkpoints" / "last.ckpt"
    predict = ("predict", "--ckpt_path", ckpt, "--trainer.logger", "false")
    cli(*predict[:1], *flow_args(one, train, unseen, *predict[1:], "--trainer.accelerator", "cpu",
                                 "--model.init_args.output_dir", tmp_path / "post1"))
    run_cli(*predict[:1], *flow_args(two, train, unseen, *predict[1:], "--model.init_args.output_dir",
                                     tmp_path / "post2"))
    files1 = sorted(p.relative_to(tmp_path / "post1") for p in (tmp_path / "post1").glob("cfg_*/shard_*.npz"))
    files2 = sorted(p.relative_to(tmp_path / "post2") for p in (tmp_path / "post2").glob("cfg_*/shard_*.npz"))
    assert files1 == files2 and len(files1) == 3 * 5  # 70 samples per scale in shards of 16
    for rel in files1:
        with np.load(tmp_path / "post1" / rel) as a, np.load(tmp_path / "post2" / rel) as b:
            for key in ("images", "sample_ids", "labels", "seeds", "config_hash", "displacement"):
                np.testing.assert_array_equal(a[key], b[key])
    assert {f"cfg_{s}" for s in UNSEEN_SCALES} <= {p.name for p in (tmp_path / "post2").iterdir()}
    assert (tmp_path / "post2" / "postprocess_summary.json").is_file()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_process_fit_resumes_exactly(flow_inputs, tmp_path):  # noqa: F811
    _, _, train, unseen = flow_inputs
    every = _periodic(tmp_path, 2)
    run_cli("fit", *flow_args(tmp_path / "straight", train, unseen, "--trainer.max_steps", 4, *every))
    run_cli("fit", *flow_args(tmp_path / "resumed", train, unseen, "--trainer.max_steps", 4, *every, "--ckpt_path",
                              tmp_path / "straight" / "checkpoints" / "step000002.ckpt"))
    a, b = load(tmp_path / "straight" / "checkpoints" / "last.ckpt"), load(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 4
    for key in ("state_dict", "current_model_state"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}/{name} differs after a 2-process resume"
