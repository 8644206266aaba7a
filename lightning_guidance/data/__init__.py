"""LightningDataModules yielding ``(x, y)``: exact toy mixtures, bundled digits, and image datasets under data/."""

from .base import LabeledDataModule
from .digits import DigitsDataModule
from .image_folders import CIFAR10DataModule, ImageDataModule, ImageFolderDataModule, MNISTDataModule
from .toy import Fractal2DDataModule, Mixture1DDataModule, MixtureDataModule

__all__ = ["LabeledDataModule", "MixtureDataModule", "Mixture1DDataModule", "Fractal2DDataModule",
           "DigitsDataModule", "ImageDataModule", "MNISTDataModule", "CIFAR10DataModule", "ImageFolderDataModule"]
