"""``compile: true`` runs the net through ``torch.compile`` (on this CPU: inductor's C++ kernels) and changes no result
beyond float rounding; it is off by default."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import CONFIGS, cli

from lightning_guidance.io.shards import read_shard, shard_paths

pytestmark = pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
                                reason="torch.compile on CPU needs a C++ compiler")
TOY = ["--trainer.enable_progress_bar", "false", "--data.init_args.n_train", "256", "--data.init_args.n_val", "64",
       "--data.init_args.batch_size", "64", "--model.init_args.net.init_args.hidden_dim", "16"]


def test_compiled_sampling_gives_the_same_samples(tmp_path):
    cli("fit", "--config", CONFIGS / "toy/cfg_1d.yaml", "--trainer.default_root_dir", tmp_path / "cfg",
        "--trainer.max_steps", "4", *TOY)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    samples = {}
    for compiled in ("false", "true"):
        out = tmp_path / f"samples_{compiled}"
        cli("predict", "--config", CONFIGS / "toy/sampling.yaml", "--trainer.default_root_dir", out,
            "--trainer.enable_progress_bar", "false",
            "--model.init_args.checkpoint", tmp_path / "cfg/checkpoints/last.ckpt",
            "--model.init_args.samples_per_class", "32", "--model.init_args.sampler_kwargs", "{num_steps: 8}",
            "--model.init_args.sweep.values", "[3.0]", "--model.init_args.compile", compiled)
        samples[compiled] = torch.cat([read_shard(p).samples for p in shard_paths(out / "cfg_3")])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the compiled run really compiled
    assert samples["false"].abs().max() > 0
    torch.testing.assert_close(samples["true"], samples["false"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_compiled_training_gives_the_same_weights(tmp_path):
    """A few steps of fit with the net compiled (forward and backward) end at the eager run's weights."""
    weights = {}
    for compiled in ("false", "true"):
        root = tmp_path / compiled
        cli("fit", "--config", CONFIGS / "toy/cfg_1d.yaml", "--trainer.default_root_dir", root, "--trainer.max_steps",
            "6", *TOY, "--model.init_args.compile", compiled)
        weights[compiled] = torch.load(root / "checkpoints/last.ckpt", weights_only=True)["current_model_state"]
    assert weights["true"].keys() == weights["false"].keys()  # compiling keeps the checkpoint's names
    for name, value in weights["false"].items():
        torch.testing.assert_close(weights["true"][name], value, rtol=1e-4, atol=1e-5)
