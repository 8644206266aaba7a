"""Real kills: ``fit`` and ``predict`` run as subprocesses, are SIGKILLed or SIGTERMed mid-way, and are re-run.

Oracle: the same command run uninterrupted. A resumed fit must end with the very same weights, EMA, optimizer
state (every parameter's moments and the param groups), LR scheduler, global step, and the very same rows of
``metrics.csv`` (every step once, same values). A re-run predict must leave the very same shards, and no partial or
temp file may be left by the killed one.
"""

from __future__ import annotations

import csv
import os
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CONFIGS, cli, load, tiny_digits_fit
from subprocess_cli import run_cli, start_cli, stop, temp_files, wait_until, wrong_modes

EVERY = 4  # periodic checkpoint interval; the toy data gives 8 batches per epoch, so step 12 is mid-epoch
MAX_STEPS = 32
CALLBACKS = f"""
trainer:
  callbacks:
    - {{class_path: lightning_guidance.callbacks.ema.EMA, init_args: {{decay: 0.99}}}}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{save_last: true, every_n_train_steps: {EVERY}, save_top_k: -1, filename: "{{step}}"}}
    - {{class_path: throttle.Throttle, init_args: {{seconds: 0.1}}}}
"""


def fit_args(root: Path, *extra) -> list:
    root.mkdir(parents=True, exist_ok=True)
    (root.parent / "callbacks.yaml").write_text(CALLBACKS)
    return ["fit", "--config", CONFIGS / "toy/cfg_1d.yaml", "--config", root.parent / "callbacks.yaml",
            "--trainer.default_root_dir", root, "--trainer.max_steps", MAX_STEPS,
            "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", 1,
            "--trainer.check_val_every_n_epoch", 1,
            "--data.init_args.n_train", 2000, "--data.init_args.n_val", 256, "--data.init_args.batch_size", 256,
            "--model.init_args.net.init_args.hidden_dim", 32, *extra]


def metrics_rows(root: Path) -> list[dict]:
    with (root / "logs" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def logged_step(root: Path) -> int:
    path = root / "logs" / "metrics.csv"
    if not path.is_file():
        return -1
    rows = path.read_text().splitlines()[1:]
    steps = [int(r.split(",")[1]) for r in rows if r.count(",") >= 1 and r.split(",")[1].isdigit()]
    return max(steps, default=-1)


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    for key in ("state_dict", "current_model_state"):  # EMA and raw weights
        assert a[key].keys() == b[key].keys()
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name} differs from the uninterrupted run"
    (oa,), (ob,) = a["optimizer_states"], b["optimizer_states"]
    assert oa["param_groups"] == ob["param_groups"]
    assert oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        for name, value in oa["state"][i].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(ob["state"][i][name])), f"optimizer {i}.{name}"
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert a["loops"]["fit_loop"]["epoch_loop.state_dict"] == b["loops"]["fit_loop"]["epoch_loop.state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("straight") / "run"
    done = run_cli(*fit_args(root))
    assert done.returncode == 0, done.stderr[-3000:]
    return load(root / "checkpoints" / "last.ckpt"), metrics_rows(root)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_fit_killed_mid_epoch_resumes_exactly(uninterrupted, tmp_path, signum):
    reference, reference_rows = uninterrupted
    root = tmp_path / "run"
    log = tmp_path / "first.log"
    proc = start_cli(*fit_args(root), log=log)
    # after the mid-epoch periodic checkpoint at step 12, and once the run has logged steps past it
    wait_until(lambda: (root / "checkpoints" / "step=12.ckpt").exists() and logged_step(root) >= 13, proc, 240,
               "the step-12 checkpoint", log)
    rc = stop(proc, signum)
    if signum == signal.SIGKILL:
        assert rc == -signal.SIGKILL
    else:
        assert rc == 128 + signal.SIGTERM, log.read_text()[-3000:]
        assert "stopped by SIGTERM" in log.read_text()
        stopped_at = load(root / "checkpoints" / "last.ckpt")["global_step"]
        assert 13 <= stopped_at < MAX_STEPS  # the checkpoint of the step it stopped at, not the last periodic one
    assert logged_step(root) < MAX_STEPS - 1
    done = run_cli(*fit_args(root, "--ckpt_path", "last"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "not resumable" not in done.stderr and "Tip:" not in done.stdout + done.stderr
    assert_same_training_state(load(root / "checkpoints" / "last.ckpt"), reference)
    assert metrics_rows(root) == reference_rows  # every step once, the same values
    assert not temp_files(root)
    assert not wrong_modes(root), wrong_modes(root)


def test_fit_killed_right_after_a_checkpoint_resumes_exactly(uninterrupted, tmp_path):
    """SIGKILL between the periodic checkpoint of step 12 and Lightning's logging of that step: the row of the
    checkpoint's own step (step 11, the 12th batch) is already on disk, so the resumed history is the whole one."""
    reference, reference_rows = uninterrupted
    root = tmp_path / "run"
    args = fit_args(root)
    args[4] = tmp_path / "kill.yaml"  # the callbacks, and after them the kill switch
    args[4].write_text(CALLBACKS + "    - {class_path: kill_switch.KillAfterCheckpoint, init_args: {step: 12}}\n")
    killed = run_cli(*args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert load(root / "checkpoints" / "last.ckpt")["global_step"] == 12
    assert logged_step(root) == 11  # every row up to the checkpoint's step, and no later one
    done = run_cli(*fit_args(root, "--ckpt_path", "last"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_training_state(load(root / "checkpoints" / "last.ckpt"), reference)
    assert metrics_rows(root) == reference_rows


def test_fit_ends_with_a_checkpoint_of_its_final_step(tmp_path, capfd):
    """max_steps that is not a multiple of every_n_train_steps: last.ckpt is still the final step, and it is quiet:
    progress counts steps (not "Epoch 1/-2"), no vendor tip, no logging-interval warning for an 8-batch epoch."""
    root = tmp_path / "run"
    args = fit_args(root, "--trainer.max_steps", 14, "--trainer.enable_progress_bar", "true",
                    "--trainer.log_every_n_steps", 50)
    args[args.index("--config", 3) + 1] = tmp_path / "no-throttle.yaml"
    (tmp_path / "no-throttle.yaml").write_text(CALLBACKS.split("    - {class_path: throttle")[0])
    cli(*args)
    assert load(root / "checkpoints" / "last.ckpt")["global_step"] == 14
    assert (root / "checkpoints" / "step=14.ckpt").is_file()
    out = "".join(capfd.readouterr())
    assert "14/14" in out and "Epoch" not in out and "Tip:" not in out and "logging interval" not in out, out


def test_a_fresh_fit_over_an_earlier_run_keeps_its_checkpoints_aside(tmp_path):
    """A fit without a checkpoint to resume (the study retrains a stale step with ``--ckpt_path null``) in a folder
    an earlier run used: the earlier checkpoints move, whole, to ``checkpoints.1``, so ``checkpoints/last.ckpt`` (what
    the configs downstream name) is this run's final checkpoint, not an older one beside a ``last-v1.ckpt``; and
    ``--ckpt_path last`` then resumes this run."""
    root = tmp_path / "run"
    (tmp_path / "no-throttle.yaml").write_text(CALLBACKS.split("    - {class_path: throttle")[0])

    def fit(*extra):
        args = fit_args(root, *extra)
        args[4] = tmp_path / "no-throttle.yaml"
        cli(*args)

    fit("--trainer.max_steps", 8)
    earlier = {p.name: p.read_bytes() for p in (root / "checkpoints").iterdir()}
    fit("--trainer.max_steps", 4, "--ckpt_path", "null")
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["last.ckpt", "step=4.ckpt"]
    assert load(root / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert {p.name: p.read_bytes() for p in (root / "checkpoints.1").iterdir()} == earlier  # nothing deleted
    assert [int(r["step"]) for r in metrics_rows(root) if r["train/loss"]] == list(range(4))
    assert (root / "logs" / "metrics.1.csv").is_file()
    fit("--trainer.max_steps", 8, "--ckpt_path", "last")  # resumes the newest run at step 4
    assert load(root / "checkpoints" / "last.ckpt")["global_step"] == 8
    assert [int(r["step"]) for r in metrics_rows(root) if r["train/loss"]] == list(range(8))
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("checkpoints")) == ["checkpoints",
                                                                                         "checkpoints.1"]


# ---- predict ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return tiny_digits_fit(tmp_path_factory.mktemp("model"), 4)


def predict_args(ckpt: Path, out: Path, throttle: bool = True) -> list:
    extra = []
    if throttle:
        (out.parent / "throttle.yaml").write_text(
            "trainer:\n  callbacks:\n    - {class_path: throttle.Throttle, init_args: {seconds: 0.3}}\n")
        extra = ["--config", out.parent / "throttle.yaml"]
    return ["predict", "--config", CONFIGS / "digits/sampling.yaml", *extra, "--trainer.default_root_dir", out,
            "--trainer.enable_progress_bar", "false", "--model.init_args.checkpoint", ckpt,
            "--model.init_args.samples_per_class", 2, "--model.init_args.shard_size", 4,
            "--model.init_args.batch_size", 4, "--model.init_args.sampler_kwargs", "{num_steps: 2}",
            "--model.init_args.sweep.values", "[1.0, 3.0]"]


def shard_arrays(out: Path) -> dict:
    arrays = {}
    for p in sorted(out.glob("cfg_*/shard_*.npz")):
        with np.load(p) as z:
            arrays[p.relative_to(out).as_posix()] = {k: z[k].copy() for k in z.files}
    return arrays


@pytest.fixture(scope="module")
def uninterrupted_shards(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "out"
    done = run_cli(*predict_args(tiny_model, out, throttle=False))
    assert done.returncode == 0, done.stderr[-3000:]
    arrays = shard_arrays(out)
    assert len(arrays) == 10  # 2 scales x 20 samples / 4 per shard
    return arrays


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_predict_killed_mid_way_leaves_no_partial_file(tiny_model, uninterrupted_shards, tmp_path, signum):
    out = tmp_path / "out"
    log = tmp_path / "predict.log"
    # a temp file from a writer that was killed earlier (its pid no longer runs) is removed by the next run
    out.mkdir(parents=True)
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())
    leftover = out / f".shard_0000000.npz.{host}-{2**22 + 1}.abc.tmp.npz"  # above Linux's pid_max: no such process
    leftover.write_bytes(b"")
    proc = start_cli(*predict_args(tiny_model, out), log=log)
    wait_until(lambda: len(list(out.glob("cfg_*/shard_*.npz"))) >= 2, proc, 240, "two shards", log)
    rc = stop(proc, signum)
    assert rc == (-signal.SIGKILL if signum == signal.SIGKILL else 128 + signal.SIGTERM), log.read_text()[-3000:]
    partial = shard_arrays(out)
    assert 2 <= len(partial) < 10
    for name, arrays in partial.items():  # every shard on disk is whole and final
        np.testing.assert_array_equal(arrays["images"], uninterrupted_shards[name]["images"])
    if signum == signal.SIGTERM:
        assert not [p for p in temp_files(out) if p != leftover]
    done = run_cli(*predict_args(tiny_model, out, throttle=False))
    assert done.returncode == 0, done.stderr[-3000:]
    assert not temp_files(out)
    again = shard_arrays(out)
    assert again.keys() == uninterrupted_shards.keys()
    for name, arrays in again.items():
        for key, value in arrays.items():
            np.testing.assert_array_equal(value, uninterrupted_shards[name][key])
    assert not wrong_modes(out), wrong_modes(out)
