"""The straight path of rectified flow (Liu et al., ICLR 2023, eq. 1) between a generated sample and a real neighbour.

``x_t = t x1 + (1 - t) x0``, target velocity ``x1 - x0``, loss ``|| v(x_t, t) - (x1 - x0) ||^2`` (Zhao & Schwing
2025, eq. 9: ``x0`` a generated sample, ``x1`` one of its top-k nearest real neighbours).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from ..diffusion.parameterization import per_sample


def _per_sample(t: Tensor, x: Tensor) -> Tensor:
    """Time (B,) shaped to broadcast over a sample's dims."""
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must have one value per sample ({x.shape[0]},), got shape {tuple(t.shape)}")
    return per_sample(t, x)


def interpolate(x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """``x_t = t x1 + (1 - t) x0`` with ``t`` (B,) in [0, 1]."""
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    tt = _per_sample(t, x0)
    return tt * x1 + (1 - tt) * x0


def velocity_target(x0: Tensor, x1: Tensor) -> Tensor:
    """``d x_t / d t = x1 - x0`` (constant along the straight path)."""
    return x1 - x0


def flow_matching_loss(velocity: Callable[[Tensor, Tensor], Tensor], x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """Mean over the batch and dims of ``(v(x_t, t) - (x1 - x0))^2``."""
    return F.mse_loss(velocity(interpolate(x0, x1, t), t), velocity_target(x0, x1))
