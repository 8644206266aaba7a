"""Discrete VP noise schedules and the EDM sigma discretisation.

Conventions (one place for every conversion):
- training step index ``i`` in ``0..T-1``; ``abar[i] = prod_{j<=i} (1 - beta_j)``; ``x_i = sqrt(abar_i) x_0 + sqrt(1-abar_i) eps``.
- networks take the continuous model time ``t = i / (T - 1)`` in [0, 1] (``model_time``); fractional ``i``
  is allowed so that the EDM sampler can query any sigma (docs/math.md §7).
- all schedule arithmetic is float64; callers cast at the tensor boundary.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .parameterization import per_sample

SCHEDULE_KINDS = ("linear", "cosine")


class VPSchedule:
    """Variance-preserving schedule defined by its betas (Ho et al. 2020; cosine: Nichol & Dhariwal 2021, eq. 17)."""

    def __init__(self, betas: Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or len(betas) < 2:
            raise ValueError(f"betas must be a 1-D tensor with at least 2 entries, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must lie in (0, 1)")
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def linear(cls, num_train_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "VPSchedule":
        """DDPM's linear betas, scaled to ``num_train_steps`` as in improved-DDPM (scale = 1000 / T)."""
        scale = 1000.0 / num_train_steps
        return cls(torch.linspace(scale * beta_start, scale * beta_end, num_train_steps, dtype=torch.float64))

    @classmethod
    def cosine(cls, num_train_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "VPSchedule":
        """abar(t) = cos^2(((t + s)/(1 + s)) pi/2), betas clipped at ``max_beta`` (Nichol & Dhariwal 2021)."""
        f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        betas = [min(1 - f((i + 1) / num_train_steps) / f(i / num_train_steps), max_beta) for i in range(num_train_steps)]
        return cls(torch.tensor(betas, dtype=torch.float64))

    @classmethod
    def from_name(cls, kind: str, num_train_steps: int = 1000) -> "VPSchedule":
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown noise schedule {kind!r}; choose one of {SCHEDULE_KINDS}")
        return getattr(cls, kind)(num_train_steps)

    # ---- basic quantities ---------------------------------------------------------------------
    @property
    def num_train_steps(self) -> int:
        return len(self.betas)

    def model_time(self, index: Tensor | float) -> Tensor:
        """Continuous network time ``t = i / (T - 1)`` in [0, 1] for (possibly fractional) step indices."""
        return torch.as_tensor(index, dtype=torch.float64) / (self.num_train_steps - 1)

    def abar(self, index: Tensor | float) -> Tensor:
        """``abar`` at a (possibly fractional) step index, linear interpolation of log(abar) between steps."""
        index = torch.as_tensor(index, dtype=torch.float64).clamp(0, self.num_train_steps - 1)
        lo = index.floor().long()
        hi = (lo + 1).clamp(max=self.num_train_steps - 1)
        w = index - lo
        log_abar = self.alphas_cumprod.log()
        return torch.exp((1 - w) * log_abar[lo] + w * log_abar[hi])

    def q_sample(self, x0: Tensor, index: Tensor, noise: Tensor) -> Tensor:
        """Forward process ``x_i = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps`` for a batch of integer indices."""
        abar = self.alphas_cumprod.to(x0.device)[index].to(x0.dtype)
        abar = per_sample(abar, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    # ---- respacing (Nichol & Dhariwal 2021, §4) -------------------------------------------------
    def respaced_indices(self, num_steps: int) -> Tensor:
        """``num_steps`` evenly spaced training indices, descending from T-1 to 0 (the sampling order)."""
        if not 1 <= num_steps <= self.num_train_steps:
            raise ValueError(f"num_steps must be in [1, {self.num_train_steps}], got {num_steps}")
        idx = torch.linspace(0, self.num_train_steps - 1, num_steps, dtype=torch.float64).round().long()
        return idx.flip(0)

    def respace(self, num_steps: int) -> tuple["VPSchedule", Tensor]:
        """A schedule over the kept indices whose abar equals the original at those indices.

        Returns ``(schedule, kept_indices_ascending)``; betas_k = 1 - abar[k] / abar[k-1] (improved-DDPM).
        """
        kept = self.respaced_indices(num_steps).flip(0)
        abar = self.alphas_cumprod[kept]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        return VPSchedule(1 - abar / prev), kept

    # ---- EDM view (docs/math.md §7) ----------------------------------------------------------------
    def sigma(self, index: Tensor | float) -> Tensor:
        """VE noise level of a VP step: ``sigma = sqrt((1 - abar) / abar)``."""
        abar = self.abar(index)
        return ((1 - abar) / abar).sqrt()

    def index_of_sigma(self, sigma: Tensor | float) -> Tensor:
        """Fractional step index whose sigma equals ``sigma`` (inverse of :meth:`sigma`, log-linear interpolation)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        log_sig = (((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()).log()  # increasing in i
        s = sigma.clamp(min=log_sig[0].exp(), max=log_sig[-1].exp()).log()
        hi = torch.searchsorted(log_sig, s.reshape(-1)).clamp(1, self.num_train_steps - 1).reshape(s.shape)
        lo = hi - 1
        w = (s - log_sig[lo]) / (log_sig[hi] - log_sig[lo])
        return lo.to(torch.float64) + w

    @property
    def sigma_min(self) -> float:
        return float(self.sigma(0))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(self.num_train_steps - 1))


def edm_sigma_steps(num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022, eq. 5: ``sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho``, then 0 appended."""
    if num_steps < 2:
        raise ValueError(f"EDM needs num_steps >= 2, got {num_steps}")
    i = torch.arange(num_steps, dtype=torch.float64)
    sig = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])
