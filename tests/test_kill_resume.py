"""Real kills: ``fit`` and ``predict`` run as subprocesses, are SIGKILLed or SIGTERMed mid-way, and are re-run.

Oracle: the same command run uninterrupted. A resumed fit must end with the very same weights, EMA, optimizer
state (every parameter's moments and the param groups), LR scheduler, global step, and the very same rows of
``metrics.csv`` (every step once, same values). A re-run predict must leave the very same shards, and no partial or
temp file may be left by the killed one.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CONFIGS, cli, load, tiny_digits_fit
from subprocess_cli import run_cli, start_cli, stop, temp_files, wait_until, wrong_modes

EVERY = 4  # periodic checkpoint interval; the toy data gives 8 batches per epoch, so step 12 is mid-epoch
MAX_STEPS = 32
VAL_EVERY = 2  # validation after epochs 2 and 4 (steps 16 and 32), none after epochs 1 and 3 (steps 8 and 24)
CALLBACKS = f"""
trainer:
  callbacks:
    - {{class_path: lightning_guidance.callbacks.ema.EMA, init_args: {{decay: 0.99}}}}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{save_last: true, every_n_train_steps: {EVERY}, save_top_k: -1, filename: "{{step}}"}}
    - {{class_path: throttle.Throttle, init_args: {{seconds: 0.1}}}}
"""
UNTHROTTLED = CALLBACKS.split("    - {class_path: throttle")[0]  # for kills at a given step (no race to win)


def fit_args(root: Path, *extra, callbacks: str = CALLBACKS) -> list:
    root.mkdir(parents=True, exist_ok=True)
    (root.parent / "callbacks.yaml").write_text(callbacks)
    return ["fit", "--config", CONFIGS / "toy/cfg_1d.yaml", "--config", root.parent / "callbacks.yaml",
            "--trainer.default_root_dir", root, "--trainer.max_steps", MAX_STEPS,
            "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", 1,
            "--trainer.check_val_every_n_epoch", VAL_EVERY,
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
    assert a["epoch"] == b["epoch"]
    assert a["loops"] == b["loops"]  # every loop's progress: epochs, batches, optimizer steps, validation


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("straight") / "run"
    done = run_cli(*fit_args(root, callbacks=UNTHROTTLED))
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
    done = run_cli(*fit_args(root, "--ckpt_path", "last", callbacks=UNTHROTTLED))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "not resumable" not in done.stderr and "Tip:" not in done.stdout + done.stderr
    assert_same_training_state(load(root / "checkpoints" / "last.ckpt"), reference)
    assert metrics_rows(root) == reference_rows  # every step once, the same values
    assert not temp_files(root)
    assert not wrong_modes(root), wrong_modes(root)


@pytest.mark.parametrize("step, signum", [(12, signal.SIGKILL), (8, signal.SIGKILL), (16, signal.SIGKILL),
                                           (16, signal.SIGTERM)],
                         ids=["mid-epoch", "epoch-end", "epoch-end-before-validation", "SIGTERM-epoch-end"])
def test_fit_killed_right_after_a_checkpoint_resumes_exactly(uninterrupted, tmp_path, step, signum):
    """SIGKILL between the periodic checkpoint of a step and Lightning's logging of that step: the row of the
    checkpoint's own step (the step-th batch) is already on disk, so the resumed history is the whole one.
    Steps 8 and 16 are the last batches of epochs 1 and 2: their checkpoints are taken at the batch's end, before
    the epoch's end (and, at 16, before its validation), which the resumed run must still run: the val row, the
    epoch hooks and every loop counter as in the straight run (Lightning restored such a checkpoint as a finished
    epoch: the val row was lost for good and the epoch counters drifted). SIGTERM during batch 16: the run stops
    with that batch's checkpoint (its validation and epoch end ran, and run again on the resume)."""
    reference, reference_rows = uninterrupted
    root = tmp_path / "run"
    switch = "KillAfterCheckpoint" if signum == signal.SIGKILL else "SignalDuringStep"
    killed = run_cli(*fit_args(root, callbacks=UNTHROTTLED + f"    - {{class_path: kill_switch.{switch}, "
                                                             f"init_args: {{step: {step}}}}}\n"))
    assert killed.returncode == (-signal.SIGKILL if signum == signal.SIGKILL else 128 + signum), killed.stderr[-3000:]
    assert load(root / "checkpoints" / "last.ckpt")["global_step"] == step
    if signum == signal.SIGKILL:
        assert logged_step(root) == step - 1  # every row up to the checkpoint's step, and no later one
    done = run_cli(*fit_args(root, "--ckpt_path", "last", callbacks=UNTHROTTLED))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_training_state(load(root / "checkpoints" / "last.ckpt"), reference)
    assert metrics_rows(root) == reference_rows


# ---- every trained module, not only the CFG model (and the flow: test_flow_cli.py) ---------------------------------
def classifier_args(root: Path, *extra, callbacks: str = UNTHROTTLED) -> list:
    """The noisy toy classifier (configs/toy/classifier_1d.yaml), 8 batches an epoch, 16 steps."""
    root.mkdir(parents=True, exist_ok=True)
    (root.parent / "callbacks.yaml").write_text(callbacks)
    return ["fit", "--config", CONFIGS / "toy/classifier_1d.yaml", "--config", root.parent / "callbacks.yaml",
            "--trainer.default_root_dir", root, "--trainer.max_steps", 16, "--trainer.enable_progress_bar", "false",
            "--trainer.log_every_n_steps", 1, "--trainer.check_val_every_n_epoch", 1,
            "--model.init_args.net.init_args.hidden_dim", 16, "--model.init_args.warmup_steps", 4,
            "--data.init_args.n_train", 2000, "--data.init_args.n_val", 256, "--data.init_args.batch_size", 256, *extra]


CALIBRATION = """
seed_everything: 4
trainer:
  max_steps: 16
  check_val_every_n_epoch: 1
  log_every_n_steps: 1
  num_sanity_val_steps: -1
  enable_progress_bar: false
model:
  class_path: lightning_guidance.modules.smooth_ece_calibration.SmoothECECalibration
  init_args: {{checkpoint: {checkpoint}, smooth_ece_weight: 1.0, lr: 0.001, noise_seed: 4}}
data:
  class_path: lightning_guidance.data.heldout_split.HeldOutSplit
  init_args:
    data:
      class_path: lightning_guidance.data.toy.Mixture1DDataModule
      init_args: {{n_train: 256, n_val: 1024, batch_size: 64, seed: 0}}
    calibration_fraction: 0.5
    batch_size: 64
"""


def calibration_args(root: Path, checkpoint: Path, *extra, callbacks: str = UNTHROTTLED) -> list:
    """The Smooth-ECE fine-tune of a toy classifier on its held-out split: 512 items, 8 batches an epoch."""
    root.mkdir(parents=True, exist_ok=True)
    (root.parent / "callbacks.yaml").write_text(callbacks)
    (root.parent / "calibrate.yaml").write_text(CALIBRATION.format(checkpoint=checkpoint))
    return ["fit", "--config", root.parent / "calibrate.yaml", "--config", root.parent / "callbacks.yaml",
            "--trainer.default_root_dir", root, *extra]


@pytest.fixture(scope="module")
def toy_classifier(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy-classifier") / "run"
    cli(*classifier_args(root, "--trainer.max_steps", 4))
    return root / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("module", ["Classifier", "SmoothECECalibration"])
def test_every_trained_module_resumes_exactly_from_a_mid_epoch_kill(module, toy_classifier, tmp_path):
    """The kill/resume oracle of the CFG model on the other trained modules: SIGKILL right after the periodic
    checkpoint of step 12 (mid-epoch: 8 batches an epoch), resume with ``--ckpt_path last``: weights, EMA, optimizer,
    scheduler, loops and every metrics row as in the uninterrupted run. Catches: a module whose training noise
    depends on the process's RNG history (e.g. a Classifier that no longer reseeds per step), a draw made from
    state that a checkpoint does not hold."""
    def args(root, *extra, **kwargs):
        if module == "Classifier":
            return classifier_args(root, *extra, **kwargs)
        return calibration_args(root, toy_classifier, *extra, **kwargs)

    straight, root = tmp_path / "straight" / "run", tmp_path / "killed" / "run"
    done = run_cli(*args(straight))
    assert done.returncode == 0, done.stderr[-3000:]
    kill = UNTHROTTLED + "    - {class_path: kill_switch.KillAfterCheckpoint, init_args: {step: 12}}\n"
    killed = run_cli(*args(root, callbacks=kill))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert load(root / "checkpoints" / "last.ckpt")["global_step"] == 12
    done = run_cli(*args(root, "--ckpt_path", "last"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_training_state(load(root / "checkpoints" / "last.ckpt"), load(straight / "checkpoints" / "last.ckpt"))
    assert metrics_rows(root) == metrics_rows(straight)


def test_a_kill_during_a_checkpoint_write_leaves_no_file_outside_the_run(uninterrupted, tmp_path):
    """SIGKILL while the step-12 checkpoints are being written (made 64 MiB larger so that the write lasts): the only
    partial file is the checkpoint's temp name in the run folder, which the next run removes, and the system temp
    folder (TMPDIR) holds nothing; the resumed run is exact. Catches: a save that writes the whole file in the
    system temp folder first and moves it (Lightning's, through fsspec), which nothing ever cleaned."""
    reference, reference_rows = uninterrupted
    root, system_tmp = tmp_path / "run", tmp_path / "system-tmp"
    system_tmp.mkdir()
    args = fit_args(root, callbacks=UNTHROTTLED + "    - {class_path: kill_switch.PadCheckpoint, init_args: {step: 12}}\n")
    log = tmp_path / "first.log"
    proc = start_cli(*args, log=log, env={"TMPDIR": str(system_tmp)})

    def bytes_being_written() -> int:
        written = 0
        for p in [*system_tmp.rglob("*"), *root.rglob("*.tmp*")]:
            try:
                written = max(written, p.stat().st_size if p.is_file() else 0)
            except FileNotFoundError:  # renamed or removed meanwhile
                pass
        return written

    deadline = time.monotonic() + 240
    while bytes_being_written() < 2**20:  # 1 MiB: a checkpoint without the padding is ~0.3 MiB
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.001)
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not list(system_tmp.iterdir()), list(system_tmp.iterdir())
    assert [p.parent.name for p in temp_files(root)] == ["checkpoints"]  # the partial file, under a temp name
    assert load(root / "checkpoints" / "last.ckpt")["global_step"] == 8  # the previous one, whole
    done = run_cli(*fit_args(root, "--ckpt_path", "last", callbacks=UNTHROTTLED))
    assert done.returncode == 0, done.stderr[-3000:]
    assert not temp_files(root)
    assert_same_training_state(load(root / "checkpoints" / "last.ckpt"), reference)
    assert metrics_rows(root) == reference_rows


def test_a_full_disk_stops_with_one_line_and_the_resume_after_making_room_is_exact(uninterrupted, tmp_path):
    """The run folder on a 1.2 MB tmpfs (real ENOSPC, root only): the fit stops at the checkpoint that does not fit
    with one line naming that file, the room it needs and the room there is (no traceback); the previous checkpoint
    is whole, nothing partial is left, and after the tmpfs is grown the resume ends exactly like the straight run."""
    if os.geteuid() != 0:
        pytest.skip("a small tmpfs can only be mounted by root")
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("this machine does not let root mount a tmpfs")
    try:
        reference, reference_rows = uninterrupted
        root = mount / "run"
        full = run_cli(*fit_args(root, callbacks=UNTHROTTLED))
        assert full.returncode == 1, full.stderr[-3000:]
        assert "Traceback" not in full.stderr, full.stderr[-3000:]
        (line,) = [ln for ln in full.stderr.splitlines() if ln.startswith("error")]
        assert full.stderr.rstrip().endswith(line)
        size = r"[\d.]+ (B|KiB)"
        assert re.fullmatch(rf"error: disk full: writing {re.escape(str(root))}/\S+ needs {size} free in \S+ "
                            rf"\({size} free now\); make room there and re-run the same command to continue", line), line
        stopped = load(root / "checkpoints" / "last.ckpt")["global_step"]
        assert 0 < stopped < MAX_STEPS
        assert not temp_files(root)
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
        done = run_cli(*fit_args(root, "--ckpt_path", "last", callbacks=UNTHROTTLED))
        assert done.returncode == 0, done.stderr[-3000:]
        assert_same_training_state(load(root / "checkpoints" / "last.ckpt"), reference)
        assert metrics_rows(root) == reference_rows
        assert not temp_files(root)
    finally:
        subprocess.run(["umount", "-l", str(mount)])


def test_sigint_during_start_up_is_one_line_and_exit_130(tmp_path):
    """Ctrl-C while ``cli.py`` is still importing torch (before the command line's own handlers exist): one line and
    exit 130 (128 + SIGINT), nothing written; before, a KeyboardInterrupt traceback from inside the import."""
    root, log = tmp_path / "run", tmp_path / "start.log"
    proc = start_cli(*fit_args(root), log=log)
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 120
    while "libtorch" not in maps.read_text():  # torch's libraries are being loaded: mid-import
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.005)
    rc = stop(proc, signal.SIGINT)
    assert rc == 128 + signal.SIGINT, log.read_text()[-3000:]
    assert log.read_text() == "stopped by SIGINT during start-up; nothing was written\n"
    assert not list(root.iterdir())


def test_fit_ends_with_a_checkpoint_of_its_final_step(tmp_path, capfd):
    """max_steps that is not a multiple of every_n_train_steps: last.ckpt is still the final step, and it is quiet:
    progress counts steps (not "Epoch 1/-2"), no vendor tip, no logging-interval warning for an 8-batch epoch."""
    root = tmp_path / "run"
    args = fit_args(root, "--trainer.max_steps", 14, "--trainer.enable_progress_bar", "true",
                    "--trainer.log_every_n_steps", 50)
    args[args.index("--config", 3) + 1] = tmp_path / "no-throttle.yaml"
    (tmp_path / "no-throttle.yaml").write_text(UNTHROTTLED)
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
    (tmp_path / "no-throttle.yaml").write_text(UNTHROTTLED)

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
