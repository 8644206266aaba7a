"""``save_trajectory: true``: a shard keeps the path its sampler took, from the first draw of each sample's seed to the
sample itself, without changing a sample; the flag is part of the shard's config hash.

Oracles: ``PerSampleNoise`` (a sample's first draw is x_T), the same sweep sampled without the flag, and the same
sweep sampled in one batch (the path of a sample must not depend on the batch it was drawn in, beyond the rounding of
a batch's matrix products).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import cli, rewrite_sampling_config, tiny_checkpoints

from lightning_guidance.diffusion.noise import PerSampleNoise
from lightning_guidance.io.shards import manifest_shards, read_extra, read_shard

STEPS = 4


@pytest.fixture(scope="module")
def checkpoint_for(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory)


def predict(config: str, out, checkpoint_for, **overrides):
    path = rewrite_sampling_config(config, out, checkpoint_for, values=[1.0, 3.0], samples_per_class=3,
                                   shard_size=6, sampler_kwargs={"num_steps": STEPS, "eta": 0.0}, **overrides)
    cli("predict", "--config", path, "--trainer.enable_progress_bar", "false")
    return {float(v): paths for v, paths in manifest_shards(out).items()}


@pytest.mark.parametrize("config", ["toy/sampling.yaml", ("toy/sampling.yaml", "guidance/cg.yaml")])
def test_the_path_ends_in_the_samples_and_changes_none(tmp_path, checkpoint_for, config):
    plain = predict(config, tmp_path / "plain", checkpoint_for, batch_size=6)
    traced = predict(config, tmp_path / "traced", checkpoint_for, batch_size=6, save_trajectory=True)
    batched = predict(config, tmp_path / "batched", checkpoint_for, batch_size=4, save_trajectory=True)
    for value, (path,) in traced.items():
        shard, before = read_shard(path), read_shard(plain[value][0])
        assert torch.equal(shard.samples, before.samples)  # recording changes no sample
        assert shard.config_hash != before.config_hash and shard.config["trajectory"] is True
        assert "trajectory" not in before.config and read_extra(plain[value][0], "trajectory") is None
        path_ = torch.from_numpy(read_extra(path, "trajectory"))
        assert path_.shape == (STEPS + 1, 6, 1)
        assert torch.equal(path_[-1], shard.samples)
        x_T = PerSampleNoise(shard.seeds).randn((1,))
        assert torch.equal(path_[0], x_T)
        assert not torch.equal(path_[1], path_[0])  # a step moves the state
        (other,) = batched[value]  # two batches (4 + 2): the same path for every sample (to float rounding: the
        assert np.allclose(read_extra(other, "trajectory"), path_.numpy(), rtol=1e-5, atol=1e-6)  # batch's matmuls
