"""The second judge (configs/digits/judge_conv.yaml, a LeNet-like ``ConvClassifier``): trained through the real CLI,
it grades the same shards as the MLP judge and, like it, rates held-out real digits far above noise.

Oracle for the net: its features are the input of its last layer, computed here from its own submodules."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import CONFIGS, cli, load

from lightning_guidance.io.shards import Shard, read_shard, write_shard
from lightning_guidance.metrics.judge import Judge
from lightning_guidance.nets import ConvClassifier
from test_sampling_test_stage import (real_digits, setup_paths, shards_copy,  # noqa: F401 - fixtures
                                      stage_args)


def test_conv_classifier_is_a_clean_classifier_whose_features_feed_its_head():
    torch.manual_seed(0)
    net = ConvClassifier([1, 8, 8], 10).eval()
    x = torch.randn(5, 1, 8, 8)
    judge = Judge(classifier=net)
    logits, features = judge.logits_and_features(x)
    assert judge.feature_layer == "head" and judge.num_features == 128
    torch.testing.assert_close(features, net.features(x))
    torch.testing.assert_close(logits, net(x, None))
    torch.testing.assert_close(net(x, torch.zeros(5)), logits)
    with pytest.raises(ValueError, match="no time input; train it with noisy: false"):
        net(x, torch.full((5,), 0.5))
    with pytest.raises(ValueError, match="must divide by 4"):
        ConvClassifier([1, 6, 6], 10)
    assert ConvClassifier([1, 28, 28], 10, channels=(8, 8))(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.fixture(scope="module")
def conv_judge(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge_conv")
    cli("fit", "--config", CONFIGS / "digits/judge_conv.yaml", "--trainer.default_root_dir", root,
        "--trainer.max_steps", "150", "--trainer.enable_progress_bar", "false")
    return root / "checkpoints" / "last.ckpt"


def test_the_second_judge_grades_the_same_shards_and_tells_real_from_noise(setup_paths, shards_copy,  # noqa: F811
                                                                          conv_judge):
    judge, ckpt, _ = setup_paths
    assert load(conv_judge)["hyper_parameters"]["net"]["class_path"].endswith("ConvClassifier")
    x_real, y_real = real_digits()
    g = torch.Generator().manual_seed(0)
    for path in sorted((shards_copy / "cfg_1").glob("shard_*.npz")):  # held-out real digits
        s = read_shard(path)
        write_shard(path, Shard(x_real[s.sample_ids], y_real[s.sample_ids], s.seeds, s.sample_ids, s.value,
                                s.config_hash))
    for path in sorted((shards_copy / "cfg_3").glob("shard_*.npz")):  # uniform noise
        s = read_shard(path)
        write_shard(path, Shard(torch.rand(s.samples.shape, generator=g) * 2 - 1, s.labels, s.seeds, s.sample_ids,
                                s.value, s.config_hash))
    tables = {}
    for name, path in (("mlp", judge), ("conv", conv_judge)):
        cli(*stage_args(ckpt, shards_copy, path))
        tables[name] = json.loads((shards_copy / "metrics_table.json").read_text())
    assert tables["conv"]["judge_num_features"] == 128 != tables["mlp"]["judge_num_features"]
    for name, table in tables.items():
        rows = {r["value"]: r["metrics"] for r in table["rows"]}
        assert rows[1.0]["judge_accuracy"] > 0.85 > 0.5 > rows[3.0]["judge_accuracy"], name
        assert rows[1.0]["fd_digits"] * 5 < rows[3.0]["fd_digits"], name
        assert rows[1.0]["kd_digits"] < rows[3.0]["kd_digits"], name
        assert table["real"]["judge_accuracy"] > 0.85, name
