"""DataModules: shapes, dtypes, ranges, determinism, the stratified split, and clear errors for missing data."""

import re
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from lightning_guidance.data import (CIFAR10DataModule, DigitsDataModule, Fractal2DDataModule, ImageFolderDataModule,
                                     Mixture1DDataModule, MNISTDataModule)


def _all(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


# ---- toy ---------------------------------------------------------------------------------------------


def test_mixture1d_batches_shapes_and_values():
    dm = Mixture1DDataModule(mu=1.0, sigma=0.05, n_train=3000, n_val=500, batch_size=256, seed=0)
    assert dm.num_classes == 2 and dm.data_shape == (1,) and dm.mixture.num_classes == 2
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (256, 1) and x.dtype == torch.float32 and y.dtype == torch.int64
    xv, yv = _all(dm.val_dataloader())
    assert len(xv) == 500  # last partial batch kept
    # each sample sits within 6 sigma of its own class's mean (-1 for class 0, +1 for class 1)
    assert ((xv[:, 0] - (2 * yv - 1).float()).abs() < 6 * 0.05).all()
    assert abs(yv.float().mean().item() - 0.5) < 0.1


def test_toy_setup_is_deterministic_and_seeded():
    a, b, c = (Fractal2DDataModule(n_train=400, n_val=100, batch_size=64, seed=s) for s in (3, 3, 4))
    for dm in (a, b, c):
        dm.setup("fit")
    assert a.data_shape == (2,) and a.num_classes == 2 and a.mixture.num_components == 2032
    assert torch.equal(a.train_set.tensors[0], b.train_set.tensors[0])
    assert torch.equal(a.val_set.tensors[1], b.val_set.tensors[1])
    assert not torch.equal(a.train_set.tensors[0], c.train_set.tensors[0])
    # the shuffled train order is the same for two loaders with one seed, and is not the stored order
    xa, _ = _all(a.train_dataloader())
    xb, _ = _all(b.train_dataloader())
    assert torch.equal(xa, xb) and not torch.equal(xa, a.train_set.tensors[0])
    # each epoch has its own order, fixed by (seed, epoch) alone (what Lightning's set_epoch relies on)
    loader = a.train_dataloader()
    loader.sampler.set_epoch(1)
    x1, _ = _all(loader)
    assert not torch.equal(x1, xa) and torch.equal(torch.sort(x1, 0)[0], torch.sort(xa, 0)[0])
    again = b.train_dataloader()
    again.sampler.set_epoch(1)
    assert torch.equal(_all(again)[0], x1)
    # val keeps its order
    assert torch.equal(_all(a.val_dataloader())[0], a.val_set.tensors[0])
    # a second setup call (another stage) does not redraw
    before = a.train_set
    a.setup("validate")
    assert a.train_set is before


def test_fractal_single_class_data_has_that_class_only():
    dm = Fractal2DDataModule(classes=(1,), n_train=200, n_val=50, batch_size=50)
    dm.setup()
    assert (dm.train_set.tensors[1] == 1).all() and dm.num_classes == 2


@pytest.mark.parametrize("kwargs, match", [({"batch_size": 0}, "batch_size"), ({"n_train": 0}, "n_train"),
                                           ({"sigma": 0.0}, "sigma"), ({"num_workers": -1}, "num_workers")])
def test_toy_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Mixture1DDataModule(**kwargs)


def test_loader_before_setup_is_a_clear_error():
    with pytest.raises(RuntimeError, match="setup"):
        Mixture1DDataModule().train_dataloader()


# ---- digits ------------------------------------------------------------------------------------------


def test_digits_shapes_range_and_split():
    dm = DigitsDataModule(batch_size=100, val_fraction=0.2, seed=0)
    assert dm.num_classes == 10 and dm.data_shape == (1, 8, 8)
    dm.setup("fit")
    xt, yt = _all(dm.train_dataloader())
    xv, yv = _all(dm.val_dataloader())
    assert xt.shape[1:] == (1, 8, 8) and xt.dtype == torch.float32 and yt.dtype == torch.int64
    assert len(xt) + len(xv) == 1797 and len(xv) == int(np.ceil(0.2 * 1797))
    both = torch.cat([xt, xv])
    assert both.min().item() == -1.0 and both.max().item() == 1.0  # 0 -> -1, 16 -> 1
    # pixel values are (v / 8 - 1) of sklearn's integers 0..16, and the images are sklearn's, in some order
    raw, labels = load_digits(return_X_y=True)
    expected = np.sort(raw.reshape(-1, 64) / 8.0 - 1.0, axis=0)
    np.testing.assert_allclose(np.sort(both.reshape(-1, 64).numpy(), axis=0), expected, atol=1e-6)
    # stratified: each class's share in val matches its share overall to within one image
    counts_all = np.bincount(labels, minlength=10)
    counts_val = np.bincount(yv.numpy(), minlength=10)
    assert np.all(np.abs(counts_val - counts_all * len(yv) / len(labels)) <= 1)
    # test split = val split
    xs, ys = _all(dm.test_dataloader())
    assert torch.equal(xs, xv) and torch.equal(ys, yv)


def test_digits_split_is_seeded():
    a, b, c = (DigitsDataModule(seed=s) for s in (1, 1, 2))
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.val_set.tensors[0], b.val_set.tensors[0])
    assert not torch.equal(a.val_set.tensors[0], c.val_set.tensors[0])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_digits_rejects_bad_val_fraction(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        DigitsDataModule(val_fraction=fraction)


# ---- image folders -------------------------------------------------------------------------------------


def test_missing_mnist_names_the_path(tmp_path):
    dm = MNISTDataModule(root=str(tmp_path))
    assert dm.num_classes == 10 and dm.data_shape == (1, 28, 28)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "MNIST" / "raw"))):
        dm.setup("fit")
    with pytest.raises(FileNotFoundError, match="README"):
        dm.prepare_data()


def test_missing_cifar10_file_is_named(tmp_path):
    dm = CIFAR10DataModule(root=str(tmp_path))
    assert dm.num_classes == 10 and dm.data_shape == (3, 32, 32)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "cifar-10-batches-py"))):
        dm.setup("fit")
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="data_batch_2"):
        dm.setup("fit")


def test_missing_image_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "train"))):
        ImageFolderDataModule(root=str(tmp_path), image_size=16)
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="class sub-folders"):
        ImageFolderDataModule(root=str(tmp_path), image_size=16)
    (tmp_path / "train" / "cat").mkdir()
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=16)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "val"))):
        dm.setup("fit")


def _write_idx(path, array, magic):
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes())


def test_mnist_reads_idx_files_into_signed_unit_range(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 5)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255
        _write_idx(raw / f"{split}-images-idx3-ubyte", images, 0x00000803)  # idx: ubyte, 3 dims
        _write_idx(raw / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8), 0x00000801)
    dm = MNISTDataModule(root=str(tmp_path), batch_size=4)
    dm.setup("fit")
    x, y = _all(dm.train_dataloader())
    assert x.shape == (12, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    xv, yv = _all(dm.val_dataloader())
    assert len(xv) == 5 and yv.tolist() == [0, 1, 2, 3, 4]
    # pixel v in 0..255 becomes 2 v / 255 - 1
    first = torch.from_numpy(np.fromfile(raw / "t10k-images-idx3-ubyte", dtype=np.uint8, offset=16)[:784])
    torch.testing.assert_close(xv[0, 0].flatten(), first.float() * 2 / 255 - 1)


def test_image_folder_reads_resizes_and_counts_classes(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("bird", "ant", "cat"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=16, batch_size=4)
    assert dm.num_classes == 3 and dm.data_shape == (3, 16, 16) and dm.classes == ["ant", "bird", "cat"]
    dm.setup("fit")
    x, y = _all(dm.val_dataloader())
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.5 and x.max() > 0.5
    assert y.tolist() == [0, 0, 1, 1, 2, 2]  # sorted folder names: ant, bird, cat
