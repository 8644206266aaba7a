"""The controls of the nearest-neighbour post-processor, through the real CLI: the copy-the-nearest-neighbour baseline
(against scikit-learn's NearestNeighbors), same-class vs any-class neighbours on a constructed case, the memorisation
distances (against a brute-force computation); and the shared bootstrap of the quality figures (against
``quality_from_products`` per resample, torchmetrics' KID, and ``stats.bootstrap``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CONFIGS, cli
from sklearn.neighbors import NearestNeighbors

from lightning_guidance.data.digits import DigitsDataModule
from lightning_guidance.data.generated import GeneratedShardsDataModule
from lightning_guidance.io.nearest_training import read_nearest_training, write_nearest_training
from lightning_guidance.io.shards import Shard, read_extra, read_shard, shard_paths, write_shard

SOURCE_HASH = "the-sampling-config"


def digits_split() -> dict:
    dm = DigitsDataModule(batch_size=64)  # the configs' real data: val_fraction 0.2, seed 0
    dm.setup("fit")
    (x, y), (hx, hy) = dm.train_set.tensors, dm.val_set.tensors
    return {"x": x.float(), "y": y.long(), "held_x": hx.float(), "held_y": hy.long()}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two folders of 'generated' digits: held-out digits plus noise, and one training digit of class 3 labelled 5
    (its nearest digit of any class is itself; of class 5, another)."""
    real, root = digits_split(), tmp_path_factory.mktemp("controls")
    g = torch.Generator().manual_seed(0)
    folders = []
    for f, scale in enumerate((2.25, 2.5)):
        x = (real["held_x"][:30] + 0.3 * torch.randn(30, 1, 8, 8, generator=g)).clamp(-1, 1)
        y = real["held_y"][:30].clone()
        if f == 0:
            three = int(torch.nonzero(real["y"] == 3)[0])
            x[7], y[7] = real["x"][three], 5
        folder = root / f"cfg_{scale:g}"
        for start in (0, 15):  # two shards per folder
            ids = torch.arange(start, start + 15)
            write_shard(folder / f"shard_{start:07d}.npz", Shard(x[ids], y[ids], 100 + ids, ids, scale, SOURCE_HASH))
        folders.append(folder)
    return root, folders, real


def predict(config: str, out, folders, *extra) -> None:
    cli("predict", "--config", CONFIGS / config, "--trainer.default_root_dir", out, "--trainer.enable_progress_bar",
        "false", "--model.init_args.output_dir", out,
        "--data.init_args.predict_shards", "[" + ", ".join(map(str, folders)) + "]", *extra)


def read_folder(folder) -> Shard:
    parts = [read_shard(p) for p in shard_paths(folder)]
    return Shard(*(torch.cat([getattr(s, k) for s in parts]) for k in ("samples", "labels", "seeds", "sample_ids")),
                 parts[0].value, parts[0].config_hash)


def test_the_copy_is_each_samples_nearest_training_digit_and_keeps_its_identity(shards, tmp_path):
    """Bug caught: a copy that is not the true nearest neighbour (same class, pixels), that loses the ids, labels,
    seeds or swept value of its source, or whose shards the test stage would not grade as the source (its hash)."""
    _, folders, real = shards
    predict("digits/nn_copy.yaml", tmp_path, folders)
    for folder in folders:
        source, copy = read_folder(folder), read_folder(tmp_path / folder.name)
        assert torch.equal(copy.sample_ids, source.sample_ids) and torch.equal(copy.labels, source.labels)
        assert torch.equal(copy.seeds, source.seeds) and copy.value == source.value
        index = np.concatenate([read_extra(p, "nearest_index") for p in shard_paths(tmp_path / folder.name)])
        assert {str(read_extra(p, "source_config_hash")) for p in shard_paths(tmp_path / folder.name)} == {SOURCE_HASH}
        for c in source.labels.unique().tolist():
            members = torch.nonzero(real["y"] == c)[:, 0].numpy()
            rows = (source.labels == c).numpy()
            nn = NearestNeighbors(n_neighbors=1).fit(real["x"][members].flatten(1).numpy())
            want = members[nn.kneighbors(source.samples[rows].float().flatten(1).numpy())[1][:, 0]]
            assert np.array_equal(index[rows], want), c
        # the copied pixels are the training digits' (as a shard stores them: 8-bit)
        assert torch.allclose(copy.samples.float(), real["x"][index], atol=1 / 255 + 1e-6)
    assert (tmp_path / "copy_summary.json").is_file()


def test_any_class_neighbours_differ_from_same_class_ones_on_a_constructed_case(shards, tmp_path):
    """A training 3 labelled 5: its nearest digit of any class is itself, its nearest 5 another digit. Same-class
    search (our choice for the flow) makes "the copy is of the asked class" true by construction; any-class does not.
    Bug caught: ``same_class`` ignored by the copy or by the flow's neighbour search."""
    from lightning_guidance.flow.neighbours import top_k_neighbours

    _, folders, real = shards
    predict("digits/nn_copy.yaml", tmp_path / "same", folders[:1])
    predict("digits/nn_copy.yaml", tmp_path / "any", folders[:1], "--model.init_args.same_class", "false")
    same, anyc = (np.concatenate([read_extra(p, "nearest_index") for p in shard_paths(tmp_path / w / folders[0].name)])
                  for w in ("same", "any"))
    three = int(torch.nonzero(real["y"] == 3)[0])
    assert anyc[7] == three and real["y"][same[7]] == 5 and same[7] != three
    assert (real["y"][same] == read_folder(folders[0]).labels).all()  # same class: never another class
    # the flow's own search, on the same case
    query = real["x"][three].flatten().numpy()[None]
    d_any, i_any = top_k_neighbours(query, real["x"].flatten(1).numpy(), 1)
    d_same, i_same = top_k_neighbours(query, real["x"].flatten(1).numpy(), 1, query_labels=np.array([5]),
                                      real_labels=real["y"].numpy(), same_class=True)
    assert i_any[0, 0] == three and d_any[0, 0] == 0 and real["y"][i_same[0, 0]] == 5 and d_same[0, 0] > 0


def test_memorisation_distances_match_a_brute_force_search(shards, tmp_path):
    """Each sample's L2 distance to its nearest training digit (any class), per folder and for the held-out digits.
    Bug caught: squared distances, same-class search, rows out of id order, the wrong held-out split."""
    _, folders, real = shards
    predict("digits/memorisation.yaml", tmp_path, folders)
    found = read_nearest_training(tmp_path / "nearest_training.npz")
    train = real["x"].flatten(1).double()
    for folder in folders:
        source = read_folder(folder)
        want = torch.cdist(source.samples.float().flatten(1).double(), train).min(dim=1).values.numpy()
        got = found[str(Path(folder).resolve())]
        assert np.array_equal(got["ids"], source.sample_ids.numpy())
        np.testing.assert_allclose(got["distance"], want, rtol=1e-5, atol=1e-5)
    held = torch.cdist(real["held_x"].flatten(1).double(), train).min(dim=1).values.numpy()
    np.testing.assert_allclose(found["held_out"]["distance"], held, rtol=1e-5, atol=1e-5)
    assert found[str(Path(folders[0]).resolve())]["distance"][7] <= 8 / 255  # the copied training 3, stored as 8-bit pixels
    assert found["space"] == "pixels"


def test_a_moved_run_folder_still_finds_its_memorisation_entries(tmp_path, monkeypatch):
    """The file names its shard folders relative to its own folder, so the run folder can move and be read from any
    working directory; the keys are the folders' resolved paths where they are now. Bug caught: the folders named
    as the step was given them (relative to its cwd), which a rebuilt report elsewhere never finds."""
    ids, labels = np.arange(3), np.array([0, 1, 2])
    run = tmp_path / "study-x"
    for name in ("a", "b"):
        (run / "digits" / name / "s_1").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # the step is given its folders relative to its working directory
    sets = {f"study-x/digits/{name}/s_1": (ids, labels, np.full(3, d)) for name, d in (("a", 1.0), ("b", 2.0))}
    write_nearest_training(run / "digits" / "memorisation" / "nearest_training.npz", sets, (labels, np.ones(3)),
                           "pixels")
    (tmp_path / "elsewhere").mkdir()
    moved = tmp_path / "elsewhere" / "study-x"
    run.rename(moved)
    monkeypatch.chdir(tmp_path / "elsewhere" / "..")
    found = read_nearest_training(moved / "digits" / "memorisation" / "nearest_training.npz")
    assert found[str((moved / "digits" / "b" / "s_1").resolve())]["distance"].tolist() == [2.0] * 3
    assert found[str((moved / "digits" / "a" / "s_1").resolve())]["distance"].tolist() == [1.0] * 3
    assert sorted(k for k in found if k not in ("held_out", "space")) == sorted(
        str((moved / "digits" / n / "s_1").resolve()) for n in ("a", "b"))


def test_a_predict_only_data_module_needs_no_training_shards_but_training_does(tmp_path):
    dm = GeneratedShardsDataModule([], DigitsDataModule(batch_size=16), predict_shards=[str(tmp_path)])
    with pytest.raises(ValueError, match="to train on") as err:
        dm.setup("fit")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="at least one folder"):
        GeneratedShardsDataModule([], DigitsDataModule(batch_size=16))


# ---- the shared bootstrap -------------------------------------------------------------------------------------------
def products(rng, n: int, d: int = 12, shift: float = 0.0) -> dict:
    labels = np.arange(n) % 10
    return {"ids": np.arange(n), "labels": labels, "features": (rng.normal(size=(n, d)) + shift).astype(np.float32),
            "logits": (rng.normal(size=(n, 10)) * 2 + 3 * np.eye(10)[labels]).astype(np.float32)}


def test_shared_resamples_reproduce_quality_from_products_on_every_resample():
    """Bug caught: a figure of a resample that differs from ``quality_from_products`` on the same ids (weighted
    moments, the k-NN radii of the distinct drawn points, the classifier score of repeated rows)."""
    from lightning_guidance.metrics.products import quality_from_products
    from lightning_guidance.metrics.shared_resamples import shared_resamples
    from lightning_guidance.stats import resample

    rng = np.random.default_rng(1)
    a, real = products(rng, 40), products(rng, 55, shift=0.3)
    draws = shared_resamples({"a": a}, real, fd_name="fd_digits", num_resamples=12, seed=5)
    gi, ri = resample(np.random.default_rng(5), (40, 55), 12)
    keys = ["fd_digits", "precision", "recall", "judge_accuracy", "judge_score"]
    for b in range(12):
        want = quality_from_products(a, real, gi[b], ri[b], fd_name="fd_digits", knn_backend="torch", metrics=keys)
        for key in keys:
            assert draws.replicates["a"][key][b] == pytest.approx(want[key], rel=1e-9, abs=1e-12), (b, key)
    full = quality_from_products(a, real, fd_name="fd_digits", knn_backend="torch", metrics=keys)
    assert all(draws.estimates["a"][k] == pytest.approx(full[k], rel=1e-9) for k in keys)


def test_the_kernel_distance_of_a_resample_is_kid_over_all_its_pairs():
    """The all-pairs unbiased MMD^2 equals torchmetrics' KID with one subset holding every sample (equal sizes)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    from lightning_guidance.metrics.shared_resamples import shared_resamples
    from lightning_guidance.stats import resample

    rng = np.random.default_rng(2)
    a, real = products(rng, 30), products(rng, 30, shift=0.5)
    draws = shared_resamples({"a": a}, real, fd_name="fd_digits", num_resamples=3, seed=0)
    gi, ri = resample(np.random.default_rng(0), (30, 30), 3)
    for b in range(3):
        kid = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=1, subset_size=30)
        kid.update(torch.from_numpy(real["features"][ri[b]]).double(), real=True)
        kid.update(torch.from_numpy(a["features"][gi[b]]).double(), real=False)
        assert draws.replicates["a"]["kd_digits"][b] == pytest.approx(float(kid.compute()[0]), rel=1e-9, abs=1e-12)


def test_a_difference_of_two_sets_is_paired_and_is_stats_bootstrap_of_that_difference():
    """Bug caught: sets resampled with different ids (an unpaired, wider interval), or draws that are not
    ``stats.bootstrap``'s for the same seed."""
    from lightning_guidance.metrics.shared_resamples import shared_resamples
    from lightning_guidance.stats import bootstrap, normal_interval

    rng = np.random.default_rng(3)
    a, real = products(rng, 50), products(rng, 60)
    b = {**a, "logits": a["logits"] + rng.normal(size=a["logits"].shape).astype(np.float32)}
    draws = shared_resamples({"a": a, "b": b}, real, fd_name="fd_digits", num_resamples=200, seed=7)
    got = draws.interval(lambda f: f["a"]["judge_accuracy"] - f["b"]["judge_accuracy"])
    hit_a, hit_b = ((x["logits"].argmax(1) == x["labels"]).astype(float) for x in (a, b))
    want = normal_interval(bootstrap(lambda gi, ri: hit_a[gi].mean(1) - hit_b[gi].mean(1), (50, 60),
                                     num_resamples=200, seed=7, vectorized=True))
    assert (got.estimate, got.low, got.high) == pytest.approx((want.estimate, want.low, want.high), abs=1e-12)
    with pytest.raises(ValueError, match="same ids"):
        shared_resamples({"a": a, "c": {**b, "ids": b["ids"] + 1}}, real, num_resamples=2)


def test_the_memorisation_check_tells_copies_from_new_samples():
    """A set drawn like the held-out distances has about ``quantile`` of it below their ``quantile`` (its interval
    holds it) and a median gap whose interval holds 0; a set of near-copies sits below: share 1, gap < 0. Bug caught:
    the quantile taken of the set itself, or the gap's sign reversed."""
    from lightning_guidance.metrics.memorisation import memorisation_check

    rng = np.random.default_rng(4)
    held = rng.gamma(9.0, 0.3, size=400)
    like = memorisation_check(rng.gamma(9.0, 0.3, size=(300, 2)), held, 0.05, num_resamples=400)
    assert like["share_below_held_out_quantile"].low <= 0.05 <= like["share_below_held_out_quantile"].high
    assert like["median_minus_held_out"].low <= 0 <= like["median_minus_held_out"].high
    copies = memorisation_check(rng.uniform(0, 0.05, size=300), held, 0.05, num_resamples=400)
    assert copies["share_below_held_out_quantile"].estimate == 1 and copies["median_minus_held_out"].high < 0
    assert copies["median"].high < 0.05


def test_one_sets_figures_get_an_interval_around_them():
    """A bootstrap's repeats bias one set's Fréchet distance upward (its estimate falls below most replicates), so its
    percentile interval misses the value; the interval is value ± 1.96 SE of the replicates (``stats.normal_interval``)
    and, for a share, its SE is close to the binomial one. Bug caught: the percentile interval of a set's distance."""
    from lightning_guidance.metrics.shared_resamples import shared_resamples

    rng = np.random.default_rng(6)
    a, real = products(rng, 200), products(rng, 240)
    boot = shared_resamples({"a": a}, real, fd_name="fd_digits", num_resamples=200, seed=2)
    assert np.mean(boot.replicates["a"]["fd_digits"] > boot.estimates["a"]["fd_digits"]) > 0.9  # the bias
    acc = boot.interval(lambda f: f["a"]["judge_accuracy"])
    p = acc.estimate
    assert acc.low < p < acc.high and acc.high - p == pytest.approx(p - acc.low)
    assert acc.standard_error == pytest.approx(np.sqrt(p * (1 - p) / 200), rel=0.25)
    fd = boot.interval(lambda f: f["a"]["fd_digits"])
    assert fd.low < fd.estimate < fd.high and fd.high - fd.estimate == pytest.approx(fd.estimate - fd.low)
    assert fd.method == "normal"
