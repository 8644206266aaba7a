"""DataModules for image datasets a user places under ``data/`` (nothing is downloaded; see data/README.md).

Images come out as float32 in [-1, 1], NCHW; labels int64. A missing dataset raises ``FileNotFoundError`` naming
the exact path to fill.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from torchvision import datasets, transforms

from .base import LabeledDataModule

MNIST_RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                   "t10k-labels-idx1-ubyte")
CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta")


def _to_signed_unit(channels: int) -> transforms.Normalize:
    """[0, 1] tensors from ``ToTensor`` mapped to [-1, 1]: ``(x - 0.5) / 0.5`` (picklable, unlike a lambda)."""
    return transforms.Normalize([0.5] * channels, [0.5] * channels)


def _require(paths: list[Path], what: str) -> None:
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{what} not found: {path} is missing (download it on a machine with internet "
                                    f"and copy it there; see data/README.md)")


class ImageDataModule(LabeledDataModule):
    """Shared part: checks that the files exist, builds the train/eval transforms, fills the splits in ``setup``.

    Subclasses give ``required_paths()`` and ``make_dataset(train, transform)``; val and test use the held-out split.
    ``random_flip`` adds horizontal flips to training images only.

    Args:
        root: the folder that holds the dataset (see data/README.md).
        batch_size: samples per batch and process (>= 1).
        seed: seed of the training order.
        num_workers: DataLoader worker processes (0: load in the main process).
        random_flip: flip training images horizontally at random.
    """

    dataset_name: str = "dataset"

    def __init__(self, root: str, batch_size: int, seed: int, num_workers: int, random_flip: bool):
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        self.root = Path(root)
        self.random_flip = bool(random_flip)

    def required_paths(self) -> list[Path]:  # pragma: no cover - interface
        raise NotImplementedError

    def make_dataset(self, train: bool, transform: transforms.Compose) -> Dataset:  # pragma: no cover - interface
        raise NotImplementedError

    def resize(self) -> list:
        """Geometric preprocessing before ``ToTensor`` (none unless a subclass needs it)."""
        return []

    def transform(self, train: bool) -> transforms.Compose:
        flip = [transforms.RandomHorizontalFlip()] if train and self.random_flip else []
        return transforms.Compose([*self.resize(), *flip, transforms.ToTensor(),
                                   _to_signed_unit(self.data_shape[0])])

    def prepare_data(self) -> None:
        _require(self.required_paths(), self.dataset_name)  # fail on rank 0 before any worker starts

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        _require(self.required_paths(), self.dataset_name)
        self.train_set = self.make_dataset(train=True, transform=self.transform(train=True))
        self.val_set = self.make_dataset(train=False, transform=self.transform(train=False))


class MNISTDataModule(ImageDataModule):
    """MNIST from ``<root>/MNIST/raw`` (the four uncompressed idx files): x (B, 1, 28, 28), 10 classes.

    Args:
        root: the folder holding ``MNIST/raw`` (default ``data``).
        batch_size: samples per batch and process (>= 1).
        seed: seed of the training order.
        num_workers: DataLoader worker processes (0: load in the main process).
    """

    dataset_name = "MNIST"
    num_classes = 10
    data_shape = (1, 28, 28)

    def __init__(self, root: str = "data", batch_size: int = 128, seed: int = 0, num_workers: int = 0):
        super().__init__(root, batch_size, seed, num_workers, random_flip=False)  # flipped digits are not digits
        self.save_hyperparameters()

    def required_paths(self) -> list[Path]:
        raw = self.root / "MNIST" / "raw"
        return [raw, *(raw / name for name in MNIST_RAW_FILES)]

    def make_dataset(self, train: bool, transform: transforms.Compose) -> Dataset:
        return datasets.MNIST(str(self.root), train=train, transform=transform, download=False)


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 from ``<root>/cifar-10-batches-py`` (the python pickles): x (B, 3, 32, 32), 10 classes.

    Args:
        root: the folder holding ``cifar-10-batches-py`` (default ``data``).
        batch_size: samples per batch and process (>= 1).
        seed: seed of the training order.
        num_workers: DataLoader worker processes (0: load in the main process).
        random_flip: flip training images horizontally at random.
    """

    dataset_name = "CIFAR-10"
    num_classes = 10
    data_shape = (3, 32, 32)

    def __init__(self, root: str = "data", batch_size: int = 128, seed: int = 0, num_workers: int = 0,
                 random_flip: bool = True):
        super().__init__(root, batch_size, seed, num_workers, random_flip)
        self.save_hyperparameters()

    def required_paths(self) -> list[Path]:
        folder = self.root / "cifar-10-batches-py"
        return [folder, *(folder / name for name in CIFAR10_FILES)]

    def make_dataset(self, train: bool, transform: transforms.Compose) -> Dataset:
        return datasets.CIFAR10(str(self.root), train=train, transform=transform, download=False)


class ImageFolderDataModule(ImageDataModule):
    """ImageNet-style folders ``<root>/train/<class>/*.png|jpg`` and ``<root>/val/<class>/...``.

    Images are converted to RGB, resized (shorter side) and centre-cropped to ``image_size``: x (B, 3, S, S).
    Classes are the sub-folders of ``<root>/train`` in sorted order, counted when the module is built, so the
    folder must exist then; ``<root>/val`` must hold the same class folders.

    Args:
        root: the folder holding ``train/<class>/`` and ``val/<class>/`` (e.g. ``data/my_images``).
        image_size: the side S of the square RGB images the net sees (>= 1; the net's data_shape is [3, S, S]).
        batch_size: samples per batch and process (>= 1).
        seed: seed of the training order.
        num_workers: DataLoader worker processes (0: load in the main process).
        random_flip: flip training images horizontally at random.
    """

    dataset_name = "ImageFolder dataset"

    def __init__(self, root: str, image_size: int = 64, batch_size: int = 64, seed: int = 0, num_workers: int = 0,
                 random_flip: bool = True):
        super().__init__(root, batch_size, seed, num_workers, random_flip)
        if int(image_size) < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.image_size = int(image_size)
        train_dir = self.root / "train"
        _require([train_dir], self.dataset_name)
        self.classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
        if not self.classes:
            raise FileNotFoundError(f"{self.dataset_name} not found: {train_dir} has no class sub-folders "
                                    f"(expected {train_dir}/<class>/<image files>; see data/README.md)")
        self.num_classes = len(self.classes)
        self.data_shape = (3, self.image_size, self.image_size)
        self.save_hyperparameters()

    def required_paths(self) -> list[Path]:
        return [self.root / "train", self.root / "val"]

    def resize(self) -> list:
        return [transforms.Resize(self.image_size), transforms.CenterCrop(self.image_size)]

    def make_dataset(self, train: bool, transform: transforms.Compose) -> Dataset:
        split = self.root / ("train" if train else "val")
        dataset = datasets.ImageFolder(str(split), transform=transform)
        if dataset.classes != self.classes:
            raise ValueError(f"class folders of {split} differ from those of {self.root / 'train'}: "
                             f"give both splits the same <class> sub-folders")
        return dataset
