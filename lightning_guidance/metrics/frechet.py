"""Fréchet distance between real and generated images in a feature space (Heusel et al. 2017, eq. 6).

``FD = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^{1/2})`` with the means and covariances of the features.
Standard FID is this with Inception-v3 pool features; Inception weights cannot be downloaded here, so the suite
also measures FD in the feature space of a judge classifier it trains itself and names it after that space
(``fd_digits``), never "FID" (docs/math.md §6). Both reuse torchmetrics' ``FrechetInceptionDistance``: its sum states
reduce across ranks and its ``compute`` is the formula above.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance, _compute_fid
from torchmetrics.utilities import rank_zero_warn

from ..io.reference_statistics import read_reference_statistics


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``, in float64.

    The trace of the matrix square root is the sum of the square roots of the eigenvalues of ``sigma1 @ sigma2``
    (torchmetrics' implementation, which avoids an explicit ``sqrtm``).
    """
    dim = mu1.shape[-1]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(f"expected means (D,) and covariances (D, D), got {tuple(mu1.shape)}, {tuple(sigma1.shape)}, "
                         f"{tuple(mu2.shape)}, {tuple(sigma2.shape)}")
    return _compute_fid(mu1.double(), sigma1.double(), mu2.double(), sigma2.double())


class FrechetDistance(FrechetInceptionDistance):
    """Fréchet distance in the feature space of ``feature_extractor``; images are float in [-1, 1], NCHW.

    The extractor maps a batch of images to ``(B, num_features)`` and must say ``num_features`` (an int attribute).
    It is put in eval mode and kept there. ``name`` is the key to log under, e.g. ``'fd_digits'``.
    ``reset_real_features=False`` keeps the real statistics across ``reset()`` (one real set, many generated ones).
    ``update(imgs, real)``; ``compute()`` returns a scalar tensor. The extractor is a submodule: keep this metric in
    a callback, not in a trained LightningModule, or the extractor lands in its checkpoints.
    """

    def __init__(self, feature_extractor: nn.Module, name: str, reset_real_features: bool = True,
                 **kwargs: Any) -> None:
        if not isinstance(feature_extractor, nn.Module):
            raise TypeError(f"feature_extractor must be a torch.nn.Module, got {type(feature_extractor).__name__}")
        num_features = getattr(feature_extractor, "num_features", None)
        if isinstance(num_features, Tensor):
            num_features = int(num_features.item())
        if not isinstance(num_features, int) or isinstance(num_features, bool) or num_features < 1:
            raise ValueError(f"feature extractor {type(feature_extractor).__name__} needs an int attribute "
                             f"`num_features` (the length of the feature vector it returns), got {num_features!r}")
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty string such as 'fd_digits'")
        if "fid" in name.lower():
            raise ValueError(f"name {name!r} claims FID, which means Inception-v3 features: name it after its feature "
                             "space, e.g. 'fd_digits' (inception_fid() gives the real FID)")
        super().__init__(feature=feature_extractor.eval(), reset_real_features=reset_real_features, **kwargs)
        self.num_features = num_features
        self.name = name

    def train(self, mode: bool = True) -> FrechetDistance:
        # a feature extractor that switches to train mode (dropout, batch-norm updates) changes the features
        super().train(mode)
        self.inception.eval()
        return self

    def update(self, imgs: Tensor, real: bool) -> None:
        if not imgs.is_floating_point():
            raise ValueError(f"{self.name}: expected float images in [-1, 1], got dtype {imgs.dtype}")
        features = self.inception(imgs)
        if features.shape != (imgs.shape[0], self.num_features):
            raise ValueError(f"{self.name}: feature extractor returned shape {tuple(features.shape)} for "
                             f"{imgs.shape[0]} images, but its num_features says "
                             f"({imgs.shape[0]}, {self.num_features})")
        self.orig_dtype = features.dtype
        features = features.double()
        if real:
            self.real_features_sum += features.sum(dim=0)
            self.real_features_cov_sum += features.t() @ features
            self.real_features_num_samples += features.shape[0]
        else:
            self.fake_features_sum += features.sum(dim=0)
            self.fake_features_cov_sum += features.t() @ features
            self.fake_features_num_samples += features.shape[0]

    def compute(self) -> Tensor:
        num_real, num_fake = int(self.real_features_num_samples), int(self.fake_features_num_samples)
        if num_real < 2 or num_fake < 2:
            raise RuntimeError(f"{self.name}: the Fréchet distance needs at least 2 real and 2 generated samples "
                               f"(it uses covariances), got {num_real} real and {num_fake} generated")
        if min(num_real, num_fake) <= self.num_features:
            rank_zero_warn(f"{self.name}: {min(num_real, num_fake)} samples for {self.num_features} features: the "
                           "covariance is rank-deficient and the distance is strongly biased; use more samples")
        return super().compute()


def images_to_uint8_rgb(imgs: Tensor) -> Tensor:
    """[-1, 1] float NCHW (1 or 3 channels) -> uint8 RGB in [0, 255], as if the images were saved as PNG and read."""
    if imgs.ndim != 4 or imgs.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1 or 3, H, W), got {tuple(imgs.shape)}")
    pixels = ((imgs.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels


class InceptionFID(FrechetInceptionDistance):
    """Standard FID (Inception-v3 pool3, 2048 features; torch-fidelity's port) from a local weights file.

    Takes our [-1, 1] float images (grayscale is repeated to RGB) and feeds them as uint8, the way FID is defined.
    ``weights_path``: torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``. Needs the torch-fidelity package.
    ``reference``: an ``.npz`` of the real set's feature mean and covariance (``mu``, ``sigma``;
    :mod:`lightning_guidance.io.reference_statistics`) used instead of real images, which are then refused.
    """

    def __init__(self, weights_path: str | Path, reset_real_features: bool = True, reference: str | Path | None = None,
                 **kwargs: Any) -> None:
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights not found: {path} (place torch-fidelity's "
                                    "weights-inception-2015-12-05-6726825d.pth there, or use FrechetDistance with "
                                    "the suite's own judge network)")
        super().__init__(feature=2048, normalize=False, feature_extractor_weights_path=str(path),
                         reset_real_features=reset_real_features, **kwargs)
        self.name = "fid_inception"
        self.reference = None if reference is None else str(reference)
        self._reference_statistics = None if reference is None else read_reference_statistics(reference)

    def update(self, imgs: Tensor, real: bool) -> None:
        if real and self.reference is not None:
            raise ValueError(f"fid_inception reads the real statistics from {self.reference}: feed it generated images")
        super().update(images_to_uint8_rgb(imgs), real)

    def compute(self) -> Tensor:
        if self._reference_statistics is None:
            return super().compute()
        n = int(self.fake_features_num_samples)
        if n < 2:
            raise RuntimeError(f"fid_inception needs at least 2 generated samples (it uses a covariance), got {n}")
        mean = self.fake_features_sum / n
        cov = (self.fake_features_cov_sum - n * torch.outer(mean, mean)) / (n - 1)
        mu, sigma = (torch.as_tensor(a, device=mean.device) for a in self._reference_statistics)
        return frechet_distance(mu, sigma, mean, cov).to(self.orig_dtype)


def inception_fid(weights_path: str | Path, **kwargs: Any) -> InceptionFID:
    """The standard Inception FID metric built from a local weights file (FileNotFoundError naming it if absent)."""
    return InceptionFID(weights_path, **kwargs)
