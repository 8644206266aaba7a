"""Kernel distance in a judge's feature space: KID's estimator (Bińkowski et al. 2018, §3) on the judge's features.

``MMD^2_u`` with the cubic polynomial kernel ``k(a, b) = (a.b / d + 1)^3``, unbiased (the diagonal terms are left
out), averaged over ``subsets`` random subsets of ``m = min(subset_size, n_real, n_generated)`` samples of each set;
its standard deviation over the subsets comes with it. This is torchmetrics' ``KernelInceptionDistance`` fed the
judge's features, so it is named after that space (``kd_digits``), not "KID", as ``fd_digits`` is not FID. Unlike the
Fréchet distance it has no bias at small n, so small differences between methods are not buried under a
sample-size term. The subsets are drawn from a fixed seed, over the features in the order given (sort them by
sample id first, and the figure does not depend on how the samples were split over processes).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torchmetrics.image.kid import KernelInceptionDistance


class _Identity(nn.Module):
    def forward(self, features: Tensor) -> Tensor:
        return features


def kd_name(fd_name: str) -> str:
    """``fd_digits`` -> ``kd_digits``: the kernel distance is named after the same feature space."""
    return "kd_" + fd_name.removeprefix("fd_")


def kernel_distance(real: Tensor, generated: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0,
                    degree: int = 3, coef: float = 1.0) -> tuple[float, float]:
    """``(mean, std)`` of the unbiased ``MMD^2`` over subsets (module docstring); features ``(N, D)``, in float64."""
    real, generated = torch.as_tensor(real), torch.as_tensor(generated)
    if real.ndim != 2 or generated.ndim != 2 or real.shape[1] != generated.shape[1]:
        raise ValueError(f"kernel distance needs two (N, D) feature sets of one D, got {tuple(real.shape)} and "
                         f"{tuple(generated.shape)}")
    m = min(int(subset_size), len(real), len(generated))
    if m < 2:
        raise ValueError(f"the kernel distance needs at least 2 real and 2 generated samples, got {len(real)} and "
                         f"{len(generated)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns that it keeps every feature: these are all in memory
        kid = KernelInceptionDistance(feature=_Identity(), subsets=int(subsets), subset_size=m, degree=degree,
                                      coef=float(coef), sync_on_compute=False)
    kid.update(real.detach().cpu().double(), real=True)
    kid.update(generated.detach().cpu().double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = kid.compute()
    return float(mean), float(std)
