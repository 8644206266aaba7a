"""Shard and checkpoint IO without the CLI: the uint8 file boundary in closed form, shard round trips, atomic
writes, and checkpoints rebuilt from their recorded specs with the EMA or the raw weights (hand-made files).

These run in a second each, so that they also serve as the per-mutant tests of scripts/mutation_test.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from lightning_guidance.io.atomic import atomic_write
from lightning_guidance.io.checkpoints import (
    build_net,
    checkpoint_hparams,
    load_module_weights,
    read_checkpoint,
    write_net_checkpoint,
)
from lightning_guidance.io.shards import Shard, config_hash, from_uint8, read_shard, shard_hash, to_uint8, write_shard
from lightning_guidance.nets import MLPClassifier, MLPDenoiser, TrainedClassifier


# ---- the uint8 boundary ------------------------------------------------------------------------------------
def test_uint8_mapping_is_the_affine_map_of_minus_one_one_onto_0_255():
    """``u = round((x + 1) 127.5)``, clipped; back: ``x = u / 127.5 - 1``. Catches a map onto 0..254 or 1..255,
    truncation instead of rounding, and a missing clip (wrap-around of 1.2 to a small byte)."""
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 1.2, -3.0, 0.996])
    u = to_uint8(x)
    assert u.dtype == np.uint8
    assert u.tolist() == [0, 0, 128, 191, 255, 255, 0, 254]  # 0 -> 127.5 rounds to even 128; 0.996 -> 254.49 -> 254
    back = from_uint8(np.arange(256, dtype=np.uint8))
    assert back.dtype == torch.float32 and back[0] == -1 and back[-1] == 1
    torch.testing.assert_close(back, torch.arange(256) / 127.5 - 1)
    # any value in [-1, 1] comes back within half a quantisation step
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1000, generator=g) * 2 - 1
    assert (from_uint8(to_uint8(x)) - x).abs().max() <= 0.5 / 127.5 + 1e-6


# ---- shards --------------------------------------------------------------------------------------------------
def _shard(samples):
    n = len(samples)
    return Shard(samples, torch.arange(n) % 3, torch.arange(n) + 100, torch.arange(n) + 7, 2.5, config_hash({"a": 1}))


@pytest.mark.parametrize("kind", ["images", "points"])
def test_shard_round_trip(tmp_path, kind):
    """Every field comes back; images through uint8, points as float32 exactly. Catches a swapped field (seeds vs
    sample ids), a lost scale or hash, and points quantised like images."""
    g = torch.Generator().manual_seed(1)
    samples = (torch.rand(5, 1, 4, 4, generator=g) * 2 - 1) if kind == "images" else torch.randn(5, 2, generator=g)
    path = write_shard(tmp_path / "s" / "shard_0000000.npz", _shard(samples))
    assert path == tmp_path / "s" / "shard_0000000.npz" and path.is_file()
    back = read_shard(path)
    expected = from_uint8(to_uint8(samples)) if kind == "images" else samples
    torch.testing.assert_close(back.samples, expected, rtol=0, atol=0)
    assert back.labels.tolist() == [0, 1, 2, 0, 1] and back.seeds.tolist() == [100, 101, 102, 103, 104]
    assert back.sample_ids.tolist() == [7, 8, 9, 10, 11]
    assert back.scale == 2.5 and back.config_hash == config_hash({"a": 1})
    with np.load(path) as z:
        assert (kind in z) and z["data_shape"].tolist() == list(samples.shape[1:])
        assert z["labels"].dtype == np.int64 and z["seeds"].dtype == np.int64 and z["sample_ids"].dtype == np.int64
    assert shard_hash(path) == config_hash({"a": 1})
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_config_hash_is_stable_and_order_free():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert len(config_hash({})) == 12 and all(c in "0123456789abcdef" for c in config_hash({}))


def test_unreadable_or_missing_shards(tmp_path):
    """A truncated file is unfinished (hash None), not an exception; a missing one names its path."""
    path = write_shard(tmp_path / "shard.npz", _shard(torch.randn(3, 2)))
    path.write_bytes(path.read_bytes()[:40])
    assert shard_hash(path) is None
    with pytest.raises(FileNotFoundError, match=r"sample shard not found: .*nope\.npz"):
        read_shard(tmp_path / "nope.npz")


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    """Catches a write straight onto the final name: a failed write must leave the earlier file intact."""
    target = tmp_path / "out.txt"
    target.write_text("old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["out.txt"]
    atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["out.txt"]


# ---- checkpoints --------------------------------------------------------------------------------------------
NET_SPEC = {"class_path": "lightning_guidance.nets.MLPDenoiser",
            "init_args": {"data_dim": 2, "num_classes": 3, "hidden_dim": 8, "num_layers": 1}}


def _weights(net, shift):
    return {f"net.{k}": v + shift for k, v in net.state_dict().items()}


def test_a_net_is_rebuilt_with_the_ema_or_the_raw_weights(tmp_path):
    """The net is rebuilt from its recorded spec; ``state_dict`` (EMA) by default, ``current_model_state`` (raw)
    with ``use_ema=False``; the hyper-parameters come back without LightningCLI's bookkeeping keys. Catches the two
    weight sets swapped and a prefix not stripped."""
    torch.manual_seed(0)
    net = MLPDenoiser(2, 3, hidden_dim=8, num_layers=1)
    ckpt = {"hyper_parameters": {"net": NET_SPEC, "schedule": "cosine", "_instantiator": "x", "_class_path": "y"},
            "state_dict": _weights(net, 1.0), "current_model_state": _weights(net, 2.0)}
    torch.save(ckpt, tmp_path / "m.ckpt")
    loaded = read_checkpoint(tmp_path / "m.ckpt")
    assert checkpoint_hparams(loaded) == {"net": NET_SPEC, "schedule": "cosine"}
    for use_ema, shift in ((True, 1.0), (False, 2.0)):
        rebuilt = load_module_weights(build_net(loaded, tmp_path / "m.ckpt"), loaded, tmp_path / "m.ckpt", use_ema,
                                      prefix="net.")
        assert isinstance(rebuilt, MLPDenoiser) and rebuilt.num_classes == 3
        for k, v in net.state_dict().items():
            torch.testing.assert_close(rebuilt.state_dict()[k], v + shift, rtol=0, atol=0)
    # without raw weights, use_ema=False falls back to state_dict
    only_ema = {"hyper_parameters": {"net": NET_SPEC}, "state_dict": _weights(net, 1.0)}
    rebuilt = load_module_weights(build_net(only_ema, tmp_path / "m.ckpt"), only_ema, tmp_path / "m.ckpt", False,
                                  prefix="net.")
    torch.testing.assert_close(rebuilt.out.weight, net.out.weight + 1.0, rtol=0, atol=0)


def test_net_checkpoint_round_trip(tmp_path):
    """``write_net_checkpoint`` writes what ``TrainedClassifier`` reads: the weights, the hyper-parameters, extras."""
    torch.manual_seed(0)
    net = MLPClassifier(2, 3, hidden_dim=8, num_layers=1)
    spec = {"class_path": "lightning_guidance.nets.MLPClassifier",
            "init_args": {"data_shape": 2, "num_classes": 3, "hidden_dim": 8, "num_layers": 1}}
    path = write_net_checkpoint(tmp_path / "c.ckpt", net, {"net": spec, "noisy": False}, note="x")
    assert path == tmp_path / "c.ckpt" and sorted(p.name for p in tmp_path.iterdir()) == ["c.ckpt"]
    raw = read_checkpoint(path)
    assert raw["note"] == "x" and raw["hyper_parameters"] == {"net": spec, "noisy": False}
    x = torch.randn(4, 2)
    torch.testing.assert_close(TrainedClassifier(str(path))(x), net(x, None), rtol=0, atol=0)


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*nope\.ckpt \(train one first\)"):
        read_checkpoint(tmp_path / "nope.ckpt", "train one first")
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*nope\.ckpt$"):
        read_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(ValueError, match=r"does not record how to build its net .*pass `net:`"):
        build_net({"hyper_parameters": {"net": {"class_path": "x.Y", "init_args": None}}}, tmp_path / "m.ckpt")
    given = MLPDenoiser(2, 3, hidden_dim=8, num_layers=1)
    assert build_net({}, tmp_path / "m.ckpt", given) is given
    wrong = {"state_dict": {"net.nothing": torch.zeros(1)}}
    with pytest.raises(ValueError, match=r"m\.ckpt does not match the network: missing .*unexpected \['net\.nothing'\]"):
        load_module_weights(_holder(given), wrong, tmp_path / "m.ckpt")


def _holder(net):
    holder = torch.nn.Module()
    holder.net = net
    return holder


def test_trained_classifier_reads_its_checkpoint(tmp_path):
    torch.manual_seed(0)
    net = MLPClassifier(2, 3, hidden_dim=8, num_layers=1)
    spec = {"class_path": "lightning_guidance.nets.MLPClassifier",
            "init_args": {"data_shape": 2, "num_classes": 3, "hidden_dim": 8, "num_layers": 1}}
    torch.save({"hyper_parameters": {"net": spec, "noisy": False, "schedule": "cosine", "num_train_steps": 40},
                "state_dict": _weights(net, 0.5)}, tmp_path / "c.ckpt")
    clf = TrainedClassifier(str(tmp_path / "c.ckpt"))
    assert (clf.num_classes, clf.data_shape, clf.noisy) == (3, (2,), False)
    assert (clf.schedule_name, clf.num_train_steps, clf.checkpoint) == ("cosine", 40, str(tmp_path / "c.ckpt"))
    assert not clf.train().training and not any(p.requires_grad for p in clf.parameters())
    x = torch.randn(4, 2)
    for k, v in net.state_dict().items():
        v.add_(0.5)
    torch.testing.assert_close(clf(x), net(x, None))


def test_checkpoint_class_is_read_from_the_recorded_class_path_and_checked(tmp_path):
    """A checkpoint names its module class in hyper_parameters._class_path; a checkpoint of another class is
    refused in one line naming the file, the class found and the class expected, a subclass or an unimportable
    (moved) class path is let through. Catches: the class path read from another key, the check inverted or
    needing both conditions."""
    from lightning_guidance.io.checkpoints import check_checkpoint_class, check_checkpoint_file, checkpoint_class_path

    for bad in ([1, 2], {"epoch": 1}, {"state_dict": [1]}):
        with pytest.raises(ValueError, match=r"holds no state_dict: it is not a checkpoint written by this suite's "
                                             r"fit$"):
            check_checkpoint_file(tmp_path / "x.ckpt", bad)
    assert check_checkpoint_file(tmp_path / "x.ckpt", {"state_dict": {}}) == {"state_dict": {}}

    assert checkpoint_class_path({"hyper_parameters": {"_class_path": "collections.OrderedDict"}}) == \
        "collections.OrderedDict"
    assert checkpoint_class_path({}) is None and checkpoint_class_path({"hyper_parameters": None}) is None
    path = tmp_path / "m.ckpt"
    ckpt = {"hyper_parameters": {"_class_path": "collections.OrderedDict"}}
    check_checkpoint_class(ckpt, path, dict)  # OrderedDict is a dict
    check_checkpoint_class({"hyper_parameters": {"_class_path": "no_such_module.Gone"}}, path, list)
    check_checkpoint_class({}, path, list)
    with pytest.raises(ValueError, match=rf"^checkpoint {path} was written by collections\.OrderedDict, expected a "
                                         r"builtins\.list checkpoint: point to a checkpoint of the right kind$"):
        check_checkpoint_class(ckpt, path, list)


def test_shard_config_is_recorded_and_absent_for_older_shards(tmp_path):
    """The sampling config a shard records comes back as written; a shard written before shards recorded it (no
    'config' array) reads as None. Catches: the key looked up under another name, the presence test inverted."""
    from lightning_guidance.io.shards import shard_config

    samples = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    shard = _shard(samples)
    shard.config = {"sampler": "ddim", "num_steps": 4}
    path = write_shard(tmp_path / "shard_0000000.npz", shard)
    assert shard_config(path) == {"sampler": "ddim", "num_steps": 4} and read_shard(path).config == shard.config
    with np.load(path) as z:
        old = {k: z[k] for k in z.files if k != "config"}
    np.savez(tmp_path / "old.npz", **old)
    assert shard_config(tmp_path / "old.npz") is None and read_shard(tmp_path / "old.npz").config is None
