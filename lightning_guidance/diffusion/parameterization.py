"""What a denoising network predicts (eps, x0 or v) and the conversions between them.

With ``x_t = a x0 + b eps``, ``a = sqrt(abar)``, ``b = sqrt(1 - abar)`` and ``v = a eps - b x0``
(Salimans & Ho 2022, §4): ``x0 = a x_t - b v``, ``eps = b x_t + a v``.
"""

from __future__ import annotations

import torch
from torch import Tensor

PREDICTION_KINDS = ("eps", "x0", "v")


def check_prediction(kind: str) -> str:
    if kind not in PREDICTION_KINDS:
        raise ValueError(f"unknown prediction {kind!r}; choose one of {PREDICTION_KINDS}")
    return kind


def per_sample(value: float | Tensor, like: Tensor) -> Tensor:
    """A number or one value per sample (B,), shaped (B or 1, 1, ..., 1) in ``like``'s dtype and device to
    broadcast against ``like`` (B, ...)."""
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1, *([1] * (like.ndim - 1)))


def _ab(abar: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    abar = per_sample(abar, like)
    return abar.sqrt(), (1 - abar).sqrt()


def training_target(kind: str, x0: Tensor, eps: Tensor, abar: Tensor) -> Tensor:
    """The regression target for a network that predicts ``kind``."""
    check_prediction(kind)
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    a, b = _ab(abar, x0)
    return a * eps - b * x0


def prediction_to_eps(kind: str, pred: Tensor, x_t: Tensor, abar: Tensor) -> Tensor:
    """Convert a network output of ``kind`` to the noise estimate ``eps``."""
    check_prediction(kind)
    if kind == "eps":
        return pred
    a, b = _ab(abar, x_t)
    if kind == "x0":
        return (x_t - a * pred) / b
    return b * x_t + a * pred


def eps_to_x0(eps: Tensor, x_t: Tensor, abar: Tensor) -> Tensor:
    """``x0_hat = (x_t - sqrt(1 - abar) eps) / sqrt(abar)``."""
    a, b = _ab(abar, x_t)
    return (x_t - b * eps) / a


def x0_to_eps(x0: Tensor, x_t: Tensor, abar: Tensor) -> Tensor:
    a, b = _ab(abar, x_t)
    return (x_t - a * x0) / b
