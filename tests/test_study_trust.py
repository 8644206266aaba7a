"""The study runner, run for real (as a user would, a subprocess) on a micro study: twice gives the same report,
with relative links and every section filled; after a retrain it regenerates what depends on it; SIGTERM stops the
running step (no orphan), marks it interrupted and exits 143; a re-run finishes. Every file it writes is 0644.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import CONFIGS, ROOT, load
from subprocess_cli import cli_env, running_with, temp_files, wait_until, wrong_modes

from lightning_guidance.io.digests import file_digest
from lightning_guidance.io.shards import read_shard

TINY = ["--trainer.enable_progress_bar", "false", "--model.init_args.net.init_args.model_channels", "8",
        "--model.init_args.net.init_args.channel_mult", "[1]", "--data.init_args.batch_size", "16"]


# train-cfg's callbacks: the shipped config's EMA and a checkpoint every 5 steps, slowed down so that a test can
# signal the study mid-step (throttle.Throttle holds no state: a throttled run trains like an unthrottled one)
SLOW_CALLBACKS = """
trainer:
  callbacks:
    - {class_path: lightning_guidance.callbacks.ema.EMA, init_args: {decay: 0.999}}
    - {class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {save_last: true, every_n_train_steps: 5}}
    - {class_path: throttle.Throttle, init_args: {seconds: 0.1}}
"""


def micro_study(base: Path, cfg_steps: int) -> Path:
    cfg, judge, samples = base / "cfg", base / "judge", base / "samples"
    (base / "slow.yaml").write_text(SLOW_CALLBACKS)
    sampling = ["--trainer.default_root_dir", str(samples), "--trainer.enable_progress_bar", "false",
                "--model.init_args.checkpoint", str(cfg / "checkpoints" / "last.ckpt"),
                "--model.init_args.samples_per_class", "1", "--model.init_args.shard_size", "5",
                "--model.init_args.batch_size", "10", "--model.init_args.sampler_kwargs", "{num_steps: 2}",
                "--model.init_args.sweep.values", "[1.0, 2.0]"]
    study = {
        "title": "micro study", "description": "a test", "report": str(base / "report.md"),
        "steps": [
            {"name": "train-cfg", "command": "fit", "config": str(CONFIGS / "digits/cfg.yaml"),
             "args": ["--config", str(base / "slow.yaml"), "--trainer.default_root_dir", str(cfg),
                      "--trainer.max_steps", str(cfg_steps), "--trainer.log_every_n_steps", "1", *TINY]},
            {"name": "train-judge", "command": "fit", "config": str(CONFIGS / "digits/judge.yaml"),
             "args": ["--trainer.default_root_dir", str(judge), "--trainer.max_steps", "2",
                      "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false"]},
            {"name": "sample", "command": "predict", "config": str(CONFIGS / "digits/sampling.yaml"),
             "args": sampling},
            {"name": "grade", "command": "test", "config": str(CONFIGS / "digits/sampling.yaml"),
             "args": [*sampling, "--config", str(CONFIGS / "digits/grade_with_judge.yaml"),
                      "--model.init_args.judge.init_args.checkpoint", str(judge / "checkpoints" / "last.ckpt")]},
        ]}
    path = base / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def run_study(study: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "study", "--config", str(study), *args], cwd=ROOT,
                          env=cli_env(), capture_output=True, text=True, timeout=timeout, umask=0o022)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def shard_files(base: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted((base / "samples").glob("cfg_*/shard_*.npz"))}


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc to look for orphaned steps")
@pytest.mark.timeout(1800)  # four studies of up to five subprocesses each: minutes when the machine is shared
def test_study_interrupted_finished_twice_the_same_then_retrained(tmp_path):
    """One micro chain through its life: SIGTERM during train-cfg stops the step (no orphan), marks it interrupted
    and exits 143; a re-run resumes it and finishes every step; a second re-run changes nothing; after training the
    model further, what was sampled from it is regenerated. The first finished run is the interrupted one's
    continuation, so the report must carry no trace of the interruption."""
    study = micro_study(tmp_path, cfg_steps=30)
    cfg_root = tmp_path / "cfg"
    ckpt = cfg_root / "checkpoints" / "last.ckpt"

    # SIGTERM while train-cfg runs
    log = tmp_path / "study.log"
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "study", "--config", str(study)], cwd=ROOT,
                            env=cli_env(), stdout=log.open("w"), stderr=subprocess.STDOUT, umask=0o022)
    wait_until(ckpt.exists, proc, 300, "the first checkpoint", log)
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert rc == 128 + signal.SIGTERM, log.read_text()[-3000:]
    assert not running_with(str(cfg_root)), "the step outlived the study"
    assert "study interrupted at step 'train-cfg' (SIGTERM)" in log.read_text()
    assert "train-cfg: interrupted by SIGTERM" in (tmp_path / "report.md").read_text()
    stopped_at = load(ckpt)["global_step"]
    assert 5 <= stopped_at < 30
    assert not (tmp_path / "judge").exists()  # the steps after the interrupted one did not start
    time.sleep(0.1)

    # the re-run resumes train-cfg and runs the rest
    run_study(study)
    assert load(ckpt)["global_step"] == 30
    report = (tmp_path / "report.md").read_text()
    assert "interrupted by" not in report and "Re-run the study to continue" not in report
    ckpt_bytes, shards = ckpt.read_bytes(), shard_files(tmp_path)
    assert len(shards) == 4  # 2 scales x 10 samples / 5 per shard

    # relative links that resolve from the report's folder, and every section filled
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert links and not [link for link in links if link.startswith("/")]
    assert all((tmp_path / link).is_file() for link in links), links
    sections = report.split("### ")[1:]
    assert [s.split(" ")[0] for s in sections] == ["train-cfg", "train-judge", "sample", "grade"]
    assert re.search(r"\| train/loss \| [-0-9.e]+ \|", sections[0]) and "| step | 29 |" in sections[0]
    assert "| train/loss |" in sections[1]
    assert "![1](samples/cfg_1/grid.png)" in sections[2] and "| 2 | 10 |" in sections[2]
    assert "fd_digits" in sections[3] and "| real data |" in sections[3]

    run_study(study)  # nothing to do: nothing changes
    assert (tmp_path / "report.md").read_text() == report
    assert ckpt.read_bytes() == ckpt_bytes and shard_files(tmp_path) == shards
    assert not temp_files(tmp_path)
    assert not wrong_modes(tmp_path), wrong_modes(tmp_path)

    micro_study(tmp_path, cfg_steps=31)  # train the model further: what was sampled from it is regenerated
    run_study(study, "--only", "train-cfg", "sample")
    assert load(ckpt)["global_step"] == 31
    after = shard_files(tmp_path)
    assert after.keys() == shards.keys() and all(after[p] != shards[p] for p in shards)
    assert all(read_shard(p).config["checkpoint"]["sha256"] == file_digest(ckpt) for p in after)
    assert "| step | 30 |" in (tmp_path / "report.md").read_text()
