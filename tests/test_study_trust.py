"""The study's engine on real steps (a CFG fit and a predict of its shards, run through the CLI's own entry): a
finished run re-run changes nothing; after the model is trained further, the fit re-runs and what was sampled from it
is regenerated, the old outputs kept beside; every file written is group-readable (0644 under umask 022) and no
temp file is left. (SIGTERM and resume: test_study_workers.py; the report: test_study.py.)
"""

from __future__ import annotations

import json
import os

from helpers import CONFIGS
from subprocess_cli import temp_files, wrong_modes

from lightning_guidance.cli import main
from lightning_guidance.io.digests import file_digest
from lightning_guidance.io.shards import read_shard
from lightning_guidance.launch.steps import StepRunner
from lightning_guidance.launch.steps import DELETE, Step


def steps(run, fit_steps: int) -> dict[str, Step]:
    cfg = run / "cfg"
    fit = Step("train", "s", "fit", [str(CONFIGS / "digits/cfg.yaml")],
               {"trainer.default_root_dir": str(cfg), "trainer.max_steps": fit_steps,
                "trainer.callbacks[ModelCheckpoint].init_args.every_n_train_steps": fit_steps,
                "trainer.callbacks[SampleGrid]": DELETE, "trainer.enable_progress_bar": False,
                "model.init_args.net.init_args.model_channels": 8, "model.init_args.net.init_args.channel_mult": [1],
                "data.init_args.batch_size": 16}, product=str(cfg / "checkpoints" / "last.ckpt"), resume=True)
    out = run / "samples"
    sample = Step("sample", "s", "predict", [str(CONFIGS / "digits/sampling.yaml")],
                  {"trainer.default_root_dir": str(out), "model.init_args.output_dir": str(out),
                   "trainer.enable_progress_bar": False, "model.init_args.checkpoint": fit.product,
                   "model.init_args.samples_per_class": 1, "model.init_args.shard_size": 5,
                   "model.init_args.batch_size": 10, "model.init_args.sampler_kwargs": {"num_steps": 2},
                   "model.init_args.sweep.values": [1.0, 2.0]}, ["train"], str(out / "manifest.json"))
    return {"train": fit, "sample": sample}


def shards(run) -> dict:
    return {p: p.stat().st_mtime_ns for p in sorted((run / "samples").glob("cfg_*/shard_*.npz"))}


def test_rerun_changes_nothing_and_a_retrain_regenerates_what_depends_on_it(tmp_path):
    run = tmp_path / "run"
    old_umask = os.umask(0o022)
    try:
        assert StepRunner(run, steps(run, 2), in_process=main).run() == {"train": "done", "sample": "done"}
        first = shards(run)
        ckpt = run / "cfg" / "checkpoints" / "last.ckpt"
        marker = json.loads((run / "steps" / "sample.json").read_text())
        assert marker["inputs"] == {str(ckpt): file_digest(ckpt)} and len(first) == 4  # 2 scales x 10 / 5 per shard
        assert not temp_files(run) and not wrong_modes(run), wrong_modes(run)

        ckpt_bytes = ckpt.read_bytes()
        assert StepRunner(run, steps(run, 2), in_process=main).run() == {"train": "skipped", "sample": "skipped"}
        assert ckpt.read_bytes() == ckpt_bytes and shards(run) == first

        # trained further: a new config for the fit, a new checkpoint digest for the predict; both re-run
        assert StepRunner(run, steps(run, 3), in_process=main).run() == {"train": "done", "sample": "done"}
        kept = sorted(p.name.split(".")[0] for p in run.glob("*.stale-*"))
        assert kept == ["cfg", "samples"]  # nothing deleted: the old outputs beside
        again = shards(run)
        assert [p.name for p in again] == [p.name for p in first]
        assert all(read_shard(p).config["checkpoint"]["sha256"] == file_digest(ckpt) != file_digest(
            next(run.glob("cfg.stale-*")) / "checkpoints" / "last.ckpt") for p in again)
        assert not temp_files(run) and not wrong_modes(run), wrong_modes(run)
    finally:
        os.umask(old_umask)
