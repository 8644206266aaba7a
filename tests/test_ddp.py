"""DDP sampling on CPU through the real CLI: 2 spawned gloo processes predict the very same shards as 1 process
(the ranks spawned from the test's process: helpers.cli_on_two_processes).

DDP *training* is checked where it can be checked strongly: test_ddp_training.py fits 2 processes against 1 and
compares the loss curves and every weight (EMA and raw) within measured tolerances. Here the checkpoint is only
the input of the prediction, so it is fitted in one process (a 2-process fit checked by its step count alone
would let a DDP that trains nothing pass)."""

from __future__ import annotations

import numpy as np

from helpers import CONFIGS, cli, cli_on_two_processes, load

TINY_NET = ["--model.init_args.net.init_args.model_channels", "8", "--model.init_args.net.init_args.channel_mult", "[1]"]


def test_ddp_predict_writes_the_one_process_shards(tmp_path):
    """Catches: ranks that sample overlapping or missing ids (a shard written twice or not at all), per-rank noise
    that depends on the rank's batch instead of the sample id (other images), a manifest not written by rank 0."""
    fit_root = tmp_path / "fit"
    cli("fit", "--config", CONFIGS / "digits/cfg.yaml", "--trainer.default_root_dir", fit_root,
        "--trainer.max_steps", 3, "--data.init_args.batch_size", 16, "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false", *TINY_NET)
    ckpt = fit_root / "checkpoints" / "last.ckpt"
    assert load(ckpt)["global_step"] == 3  # the checkpoint the predictions read (DDP fit: test_ddp_training.py)

    def predict_args(out):
        return ["predict", "--config", CONFIGS / "digits/sampling.yaml", "--trainer.default_root_dir", out,
                "--model.init_args.checkpoint", ckpt, "--model.init_args.output_dir", out,
                "--model.init_args.sweep.values", "[1.0, 3.0]", "--model.init_args.samples_per_class", 3,
                "--model.init_args.shard_size", 8, "--model.init_args.sampler_kwargs", "{num_steps: 3}"]

    cli(*predict_args(tmp_path / "one"), "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false")
    cli_on_two_processes(*predict_args(tmp_path / "two"), "--trainer.enable_progress_bar", "false")
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").glob("cfg_*/shard_*.npz"))
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").glob("cfg_*/shard_*.npz"))
    assert one == two and len(one) == 2 * 4  # 30 samples in shards of 8, no shard written twice or missed
    for rel in one:
        with np.load(tmp_path / "one" / rel) as a, np.load(tmp_path / "two" / rel) as b:
            np.testing.assert_array_equal(a["images"], b["images"])
            np.testing.assert_array_equal(a["sample_ids"], b["sample_ids"])
    assert (tmp_path / "two" / "manifest.json").is_file()
