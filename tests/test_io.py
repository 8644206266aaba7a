"""Shard and checkpoint IO without the CLI: the uint8 file boundary in closed form, shard round trips, atomic
writes, and checkpoints rebuilt from their recorded specs with the EMA or the raw weights (hand-made files).

These run in a second each, so that they also serve as the per-mutant tests of scripts/dev/mutation_test.py.
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
from lightning_guidance.io.file_references import reference_to
from lightning_guidance.io.shards import (Shard, config_hash, from_uint8, read_postprocessed, read_shard, shard_hash,
                                         source_of, to_uint8, write_shard)
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
    assert back.value == 2.5 and back.config_hash == config_hash({"a": 1})
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


def test_a_full_disk_is_one_line_naming_the_file_and_the_room_it_needs(tmp_path, monkeypatch):
    """ENOSPC at the OS boundary (a writer that hits it; a folder whose statvfs reports too little room) becomes a
    ``DiskFullError`` whose text is one line: the file, the bytes it needs when known, the room there is. The old file
    stays, no temp file is left. (A real full disk: test_kill_resume.py, on a tmpfs.)"""
    import errno
    import shutil
    from collections import namedtuple

    import lightning_guidance.io.atomic as atomic
    from lightning_guidance.io.atomic import DiskFullError, atomic_write_bytes

    target = tmp_path / "out.ckpt"
    target.write_bytes(b"old")

    def no_room(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError) as err:
        atomic_write(target, no_room)
    assert str(err.value).startswith(f"disk full: writing {target} needs more room than that in {tmp_path} (")
    assert err.value.errno == errno.ENOSPC and "\n" not in str(err.value)
    assert target.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["out.ckpt"]

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda folder: usage(10**6, 10**6 - 2048, 2048))
    with pytest.raises(DiskFullError, match=r"^disk full: writing \S+out.ckpt needs 3.0 KiB free in \S+ "
                                            r"\(2.0 KiB free now\); make room there and re-run the same command"):
        atomic_write_bytes(target, b"x" * 3072)
    assert target.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["out.ckpt"]
    monkeypatch.setattr(atomic.shutil, "disk_usage", shutil.disk_usage)
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and sorted(os.listdir(tmp_path)) == ["out.ckpt"]


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


# ---- shard folders: naming, ordering, the checks before grading (each found by a mutation run) --------------
def _write_ids(folder, ids, hash_="h1", shape=(2,), labels=None, config=None, extra=None):
    """A points shard holding sample ids ``ids`` (its name from the first id, as predict names it)."""
    n = len(ids)
    samples = torch.arange(n * int(np.prod(shape)), dtype=torch.float32).reshape(n, *shape)
    shard = Shard(samples, torch.zeros(n, dtype=torch.long) if labels is None else torch.tensor(labels),
                  torch.tensor(ids) + 100, torch.tensor(ids), 1.0, hash_, config)
    from lightning_guidance.io.shards import shard_path
    return write_shard(shard_path(folder, ids[0]), shard, extra)


def test_shard_names_plans_and_order(tmp_path):
    """``shard_<first id, 7 digits>.npz``; a plan cuts ids 0..N-1 into consecutive blocks, the last one short;
    ``shard_paths`` lists only shard files, in id order (not the order written). Catches: the folder dropped from
    a planned path, the wrong id range, another glob, unsorted shards."""
    from lightning_guidance.io.shards import plan_shards, shard_path, shard_paths

    assert shard_path(tmp_path, 42) == tmp_path / "shard_0000042.npz"
    assert plan_shards(tmp_path, 5, 2) == [(tmp_path / "shard_0000000.npz", (0, 1)),
                                           (tmp_path / "shard_0000002.npz", (2, 3)),
                                           (tmp_path / "shard_0000004.npz", (4,))]
    assert plan_shards(tmp_path, 0, 2) == []
    for ids in ((10, 11), (0, 1), (2, 3)):
        _write_ids(tmp_path, ids)
    (tmp_path / "other.npz").write_bytes(b"")
    (tmp_path / "grid.png").write_bytes(b"")
    assert [p.name for p in shard_paths(str(tmp_path))] == ["shard_0000000.npz", "shard_0000002.npz",
                                                            "shard_0000010.npz"]


def test_read_shard_rows_is_those_rows_of_the_shard(tmp_path):
    """Some rows' samples and labels equal the same rows of the whole shard read back (images through uint8).
    Catches: all rows returned, the rows applied to the labels only."""
    from lightning_guidance.io.shards import read_shard_rows

    g = torch.Generator().manual_seed(2)
    for samples in (torch.rand(5, 1, 4, 4, generator=g) * 2 - 1, torch.randn(5, 2, generator=g)):
        path = write_shard(tmp_path / f"s{samples.ndim}.npz", _shard(samples))
        whole = read_shard(path)
        rows = np.array([3, 0, 4])
        x, y = read_shard_rows(path, rows)
        torch.testing.assert_close(x, whole.samples[rows], rtol=0, atol=0)
        assert y.tolist() == whole.labels[rows].tolist() == [0, 0, 1]


def test_check_shards_accepts_a_complete_folder_and_refuses_each_fault_in_one_line(tmp_path):
    """The checks before grading: the shards found with their ids; a post-processed shard graded as its source
    config; no shards, a stale shard (with the setting that changed, or the hash when no config is given), the
    wrong data shape, labels outside the classes and missing ids each refused with their whole message. Catches:
    any check inverted, the source hash ignored, the ids lost, a message without the file or the reason."""
    from lightning_guidance.io.shards import check_shards

    def check(folder, hash_="h1", n=4, shape=(2,), config=None):
        return check_shards(folder, hash_, n, shape, num_classes=3, real_name="toy", expected_config=config)

    good = tmp_path / "good"
    _write_ids(good, (2, 3), config={"num_steps": 4})
    _write_ids(good, (0, 1), hash_="post", extra={"source_config_hash": "h1"})  # graded as its source
    found = check(good)
    assert [p.name for p, _ in found] == ["shard_0000000.npz", "shard_0000002.npz"]
    assert [ids.tolist() for _, ids in found] == [[0, 1], [2, 3]]

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=rf"^no sample shards in {empty}: sample them first with `python "
                                                r"cli\.py predict` and the same model arguments as this test config$"):
        check(empty)
    stale = _write_ids(tmp_path / "stale", (0, 1, 2, 3), config={"num_steps": 4})
    with pytest.raises(ValueError, match=rf"^stale shard {stale}: sampled with another config than this test's "
                                         r"\(num_steps: 4 -> 8\); re-run predict with the same arguments "
                                         r"\(--model\.init_args\.overwrite true regenerates it\)$"):
        check(stale.parent, hash_="h2", config={"num_steps": 8})
    with pytest.raises(ValueError, match=rf"^stale shard {stale}: sampled with another config than this test's "
                                         r"\(hash h1\); re-run predict"):
        check(stale.parent, hash_="h2")
    with pytest.raises(ValueError, match=rf"^{good / 'shard_0000000.npz'} holds samples of shape \(2,\) but the "
                                         r"real data \(toy\) has shape \(3,\): grade shards against the dataset and "
                                         r"resolution they were generated for$"):
        check(good, shape=(3,))
    bad_labels = tmp_path / "labels"
    _write_ids(bad_labels, (0, 1), labels=[0, 3])
    with pytest.raises(ValueError, match=r"holds labels outside 0\.\.2 \(the real data's classes\): it was "
                                         r"generated for another dataset$"):
        check(bad_labels, n=2)
    with pytest.raises(ValueError, match=rf"^the shards in {good} hold 4 distinct of the 6 sample ids this config "
                                         r"asks for: predict was interrupted; re-run it \(it resumes\)$"):
        check(good, n=6)


def test_config_difference_names_each_changed_setting(tmp_path):
    """The stale-shard reason in words: every top-level key that differs (added, removed or changed, sorted), a
    changed checkpoint or guide weights digest said as such, other values as old -> new JSON. Catches: keys on one
    side only missed, old and new swapped or dropped, the digest comparison skipped."""
    from lightning_guidance.io.shards import config_difference

    old = {"num_steps": 4, "sampler": "ddim", "gone": 1, "checkpoint": {"sha256": "a"},
           "guidance": [{"class": "ClassifierGuidance", "scale": 2.0, "classifier": {"sha256": "c1"}}]}
    new = {"num_steps": 8, "sampler": "ddim", "added": [1, 2], "checkpoint": {"sha256": "b"},
           "guidance": [{"class": "ClassifierGuidance", "scale": 2.0, "classifier": {"sha256": "c2"}}]}
    assert config_difference(old, new) == (
        "added: null -> [1, 2]; the diffusion checkpoint's content changed (retrained?); gone: 1 -> null; "
        "a guide's weights file changed (retrained or swapped classifier?); num_steps: 4 -> 8")
    rescaled = dict(old, guidance=[{"class": "ClassifierGuidance", "scale": 3.0, "classifier": {"sha256": "c1"}}])
    assert config_difference(old, rescaled) == (  # same digests: the values, each cut to 60 characters
        'guidance: [{"class": "ClassifierGuidance", "scale": 2.0, "classifier": -> '
        '[{"class": "ClassifierGuidance", "scale": 3.0, "classifier":')
    assert config_difference(old, dict(old)) == ""
    assert config_difference(None, new) == config_difference({}, new) == "the shard does not record its config"


def test_manifest_is_read_back_from_the_run_folder(tmp_path):
    """``read_manifest`` reads ``<output_dir>/manifest.json`` as written, None where predict wrote none. Catches:
    another file name, the folder ignored."""
    from lightning_guidance.io.shards import read_manifest

    assert read_manifest(tmp_path) is None
    (tmp_path / "manifest.json").write_text('{"num_samples_per_value": 4, "values": {}}')
    assert read_manifest(str(tmp_path)) == {"num_samples_per_value": 4, "values": {}}


# ---- checkpoints: safe loading and its messages ----------------------------------------------------------
def test_checkpoints_are_read_weights_only_even_when_the_environment_allows_pickles(tmp_path, monkeypatch):
    """A checkpoint holding an arbitrary pickled object is refused (weights_only=True: loading it could run code),
    also when TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD asks torch for full unpickling by default; the message names the
    file and the error's first line. Catches: weights_only dropped or False."""
    import argparse

    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "extra": argparse.Namespace(a=1)}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ValueError, match=rf"^checkpoint {path} is not a PyTorch checkpoint \(UnpicklingError: "
                                         r"Weights only load failed[^\n]*\): re-create it"):
        read_checkpoint(path)


def test_unreadable_checkpoint_messages(tmp_path):
    """Empty, not a checkpoint (text), and the first line only of a many-line error, each in one line naming the
    file. Catches: an empty or marked message, the error text dropped or its second line taken."""
    from lightning_guidance.io.checkpoints import unreadable_checkpoint

    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    tail = (": re-create it (re-run the fit that writes it, or resume with --ckpt_path last from an earlier "
            "checkpoint) or point to another file")
    with pytest.raises(ValueError) as err:
        read_checkpoint(empty)
    assert str(err.value) == f"checkpoint {empty} is empty (0 bytes)" + tail
    text = tmp_path / "text.ckpt"
    text.write_text("hello")
    assert unreadable_checkpoint(text, OSError("first line\nsecond line")) == \
        f"checkpoint {text} is not a PyTorch checkpoint (OSError: first line)" + tail
    assert unreadable_checkpoint(text, OSError()) == f"checkpoint {text} is not a PyTorch checkpoint (OSError: )" + tail


def test_module_weights_default_to_the_ema_weights(tmp_path):
    """``load_module_weights`` without ``use_ema`` loads ``state_dict`` (the EMA weights), as documented. Catches:
    the raw weights by default."""
    torch.manual_seed(0)
    net = MLPDenoiser(2, 3, hidden_dim=8, num_layers=1)
    ckpt = {"state_dict": _weights(net, 1.0), "current_model_state": _weights(net, 2.0)}
    rebuilt = load_module_weights(MLPDenoiser(2, 3, hidden_dim=8, num_layers=1), ckpt, tmp_path / "m.ckpt",
                                  prefix="net.")
    torch.testing.assert_close(rebuilt.out.weight, net.out.weight + 1.0, rtol=0, atol=0)


def test_write_manifest_records_each_sweep_value_and_its_picture(tmp_path):
    """``manifest.json`` per sweep value: its shard files in id order, the sample count, its config and the sample
    picture (``grid.png`` in its folder, linked relative to the run folder, so a copied run keeps its links); a value
    without shards is left out. Catches: another key or file name, the picture not written or linked absolute."""
    from lightning_guidance.io.shards import read_manifest, write_manifest

    g = torch.Generator().manual_seed(3)
    a, empty = tmp_path / "scale_1", tmp_path / "scale_2"
    empty.mkdir()
    for first in (4, 0):
        shard = _shard(torch.rand(4, 1, 4, 4, generator=g) * 2 - 1)
        shard.sample_ids = torch.arange(first, first + 4)
        write_shard(a / f"shard_{first:07d}.npz", shard)
    manifest = write_manifest(tmp_path, {"1": a, "2": empty}, {"1": {"cfg": 1.0}, "2": {"cfg": 2.0}}, num_samples=8,
                              classes=[0, 1, 2], titles={"1": "s = 1", "2": "s = 2"}, per_class=2)
    expected = {"num_samples_per_value": 8, "classes": [0, 1, 2],
                "values": {"1": {"shards": ["shard_0000000.npz", "shard_0000004.npz"], "count": 8,
                                 "grid": "scale_1/grid.png", "config": {"cfg": 1.0}}}}
    assert manifest == expected and read_manifest(tmp_path) == expected
    assert (a / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_post_processed_folder_finds_its_sources_after_the_run_moves(tmp_path, monkeypatch):
    """A post-processed shard names its source relative to its own folder, so the run folder can move and be read
    from any working directory; a shard that named it relative to its writer's working directory still reads there.
    Bug caught: the source named as given (relative to the cwd), unreadable from anywhere else."""
    run = tmp_path / "run"
    source_path = run / "samples" / "cfg_2" / "shard_0000000.npz"
    before = torch.randn(4, 2)
    write_shard(source_path, _shard(before))
    monkeypatch.chdir(tmp_path)  # the writer is given the source relative to its working directory
    target = run / "flow" / "cfg_2" / "shard_0000000.npz"
    write_shard(target, _shard(before + 1), {"source_file": reference_to("run/samples/cfg_2/shard_0000000.npz",
                                                                         target)})
    (tmp_path / "elsewhere").mkdir()
    moved = tmp_path / "elsewhere" / "moved-run"
    run.rename(moved)
    monkeypatch.chdir(tmp_path / "elsewhere")
    after, got_before, _ = read_postprocessed(moved / "flow" / "cfg_2")
    torch.testing.assert_close(got_before, before)
    torch.testing.assert_close(after, before + 1)
    # an older shard: the source named relative to the working directory it was written from
    write_shard(moved / "flow" / "cfg_2" / "shard_0000000.npz", _shard(before + 1),
                {"source_file": "moved-run/samples/cfg_2/shard_0000000.npz"})
    assert source_of(moved / "flow" / "cfg_2" / "shard_0000000.npz").resolve() == (moved / "samples" / "cfg_2" /
                                                                                  "shard_0000000.npz").resolve()
