"""Exact denoiser and exact noisy classifier of a Gaussian mixture: the oracles every guidance term is checked against.

Both use the noised mixture (docs/math.md §6) at each row's own ``abar``; computation is float64 and the results come
back in the input's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..diffusion.cfg_rule import SamplingStep
from ..diffusion.denoiser import DenoiserOutput, check_labels
from ..diffusion.parameterization import eps_to_x0
from ..diffusion.schedules import VPSchedule
from .gaussian_mixture import GaussianMixture


class ExactMixtureDenoiser:
    """The Bayes-optimal noise predictor ``eps*(x_t) = -sqrt(1 - abar) ∇ log p_t(x_t | y)`` (Tweedie).

    Follows the ``Denoiser`` protocol: ``y`` in ``[0, K)`` is conditional, ``y = K`` (the null id) unconditional.
    ``cfg_scale`` s uses the same convention as ``NetDenoiser``: ``eps = eps_u + s (eps_c - eps_u)``, s = 1 plain
    conditional; a float or a per-sample tensor (B,). ``x0`` is not clipped (the toy data is unbounded).
    """

    def __init__(self, mixture: GaussianMixture, cfg_scale: float | Tensor = 1.0):
        self.mixture = mixture
        self.num_classes = mixture.num_classes
        self.cfg_scale = cfg_scale

    @property
    def null_class(self) -> int:
        return self.num_classes

    def eps(self, x_t: Tensor, abar: Tensor, y: Tensor | None) -> Tensor:
        """Exact ``eps`` in float64 for class ids ``y`` (null id or None: unconditional)."""
        x64 = x_t.to(torch.float64)
        abar64 = torch.as_tensor(abar, dtype=torch.float64, device=x_t.device).expand(len(x_t)).reshape(-1, 1)
        return -(1 - abar64).sqrt() * self.mixture.noised_score(x64, abar64.reshape(-1), y)

    def __call__(self, x_t: Tensor, t: Tensor, abar: Tensor, y: Tensor,
                 step: SamplingStep | None = None) -> DenoiserOutput:
        check_labels(y, self.num_classes, allow_null=True)
        x64 = x_t.to(torch.float64)
        abar64 = torch.as_tensor(abar, dtype=torch.float64, device=x_t.device).expand(len(x_t))
        out = lambda e: e.to(x_t.dtype)  # noqa: E731 - every output goes back to the caller's dtype
        if not bool((torch.as_tensor(self.cfg_scale) != 1).any()):
            eps = self.eps(x64, abar64, y)
            return DenoiserOutput(eps=out(eps), x0=out(eps_to_x0(eps, x64, abar64)))
        eps_c = self.eps(x64, abar64, y)
        eps_u = self.eps(x64, abar64, None)
        s = torch.as_tensor(self.cfg_scale, dtype=torch.float64, device=x_t.device).reshape(-1, 1)
        eps = eps_u + s * (eps_c - eps_u)
        return DenoiserOutput(eps=out(eps), x0=out(eps_to_x0(eps, x64, abar64)), eps_cond=out(eps_c),
                              eps_uncond=out(eps_u))


class ExactMixtureClassifier(nn.Module):
    """Time-dependent classifier returning the exact ``log p_t(y | x_t)`` as logits.

    ``forward(x, t)`` with continuous model time ``t`` in [0, 1] (B,): ``abar = schedule.abar(t (T - 1))``
    (the schedule's own interpolation, so it matches what samplers pass). Differentiable in ``x``, so autograd
    gives the exact classifier-guidance gradient ``∇_x log p_t(y | x)``.
    """

    def __init__(self, mixture: GaussianMixture, schedule: VPSchedule):
        super().__init__()
        self.mixture = mixture
        self.schedule = schedule
        self.num_classes = mixture.num_classes

    def abar(self, t: Tensor) -> Tensor:
        index = torch.as_tensor(t, dtype=torch.float64).detach().cpu() * (self.schedule.num_train_steps - 1)
        return self.schedule.abar(index)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        abar = self.abar(t).to(x.device).reshape(-1)
        if abar.numel() == 1:
            abar = abar.expand(len(x))
        return self.mixture.noised_log_posterior(x, abar)
