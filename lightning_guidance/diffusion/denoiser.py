"""The noise predictor a sampler calls, including classifier-free guidance as one batched forward.

A *denoiser* here is any callable ``(x_t, t, abar, y) -> DenoiserOutput`` in VP coordinates:
``x_t`` the state, ``t`` the continuous model time (B,), ``abar`` (B,) and ``y`` class ids (B,).
Samplers (DDPM, DDIM, EDM) only ever see this interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from .parameterization import check_prediction, eps_to_x0, prediction_to_eps


@dataclass
class DenoiserOutput:
    """``eps`` is what the sampler uses; ``eps_cond``/``eps_uncond`` are kept when CFG produced it."""

    eps: Tensor
    x0: Tensor
    eps_cond: Tensor | None = None
    eps_uncond: Tensor | None = None


class Denoiser(Protocol):
    num_classes: int

    def __call__(self, x_t: Tensor, t: Tensor, abar: Tensor, y: Tensor) -> DenoiserOutput: ...


def check_labels(y: Tensor, num_classes: int, allow_null: bool = False) -> None:
    """Raise a clear error for class ids outside ``[0, num_classes)`` (the null id ``num_classes`` if allowed)."""
    top = num_classes + (1 if allow_null else 0)
    if y.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"class labels must be an integer tensor, got {y.dtype}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= top):
        bad = y[(y < 0) | (y >= top)].unique().tolist()
        raise ValueError(f"class ids {bad} out of range: this model knows classes 0..{num_classes - 1}")


class NetDenoiser:
    """Wraps a class-conditional network ``net(x, t, y)`` (null class id = ``num_classes``).

    ``cfg_scale`` s (diffusers' convention): ``eps = eps_u + s (eps_c - eps_u)``; s = 1 is the plain
    conditional model, s = 0 the unconditional one (Ho & Salimans 2021 write w = s - 1). When CFG is
    active the conditional and null halves go through the network as **one** doubled batch.
    ``cfg_scale`` may be a float or a per-sample tensor (B,).
    """

    def __init__(self, net: nn.Module, num_classes: int, prediction: str = "eps", cfg_scale: float | Tensor = 1.0,
                 clip_x0: bool = True):
        self.net = net
        self.num_classes = num_classes
        self.prediction = check_prediction(prediction)
        self.cfg_scale = cfg_scale
        self.clip_x0 = clip_x0

    @property
    def null_class(self) -> int:
        return self.num_classes

    def _uses_cfg(self) -> bool:
        s = self.cfg_scale
        return bool((torch.as_tensor(s) != 1).any())

    def __call__(self, x_t: Tensor, t: Tensor, abar: Tensor, y: Tensor) -> DenoiserOutput:
        check_labels(y, self.num_classes, allow_null=True)
        t = t.to(x_t.dtype)
        if not self._uses_cfg():
            eps = prediction_to_eps(self.prediction, self.net(x_t, t, y), x_t, abar)
            return DenoiserOutput(eps=eps, x0=self._x0(eps, x_t, abar))
        null = torch.full_like(y, self.null_class)
        out = self.net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))
        both = prediction_to_eps(self.prediction, out, torch.cat([x_t, x_t]), torch.cat([abar, abar]))
        eps_c, eps_u = both.chunk(2)
        s = torch.as_tensor(self.cfg_scale, dtype=x_t.dtype, device=x_t.device).reshape(-1, *([1] * (x_t.ndim - 1)))
        eps = eps_u + s * (eps_c - eps_u)
        return DenoiserOutput(eps=eps, x0=self._x0(eps, x_t, abar), eps_cond=eps_c, eps_uncond=eps_u)

    def _x0(self, eps: Tensor, x_t: Tensor, abar: Tensor) -> Tensor:
        x0 = eps_to_x0(eps, x_t, abar)
        return x0.clamp(-1, 1) if self.clip_x0 else x0
