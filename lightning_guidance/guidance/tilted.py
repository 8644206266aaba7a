"""Tilted (batch-reweighted) classifier guidance (Javid, Bagheri & González-Prelcic 2025; docs/math.md §4).

``L_t = (1/t) log((1/B) sum_b exp(t log p(y_b|x_b)))``; ``B ∇_{x_b} L_t = B softmax_b(t log p(y|x)) ∇ log p(y_b|x_b)``.
``t < 0`` up-weights the samples the classifier is least sure of; ``t -> 0`` is plain guidance (weights 1).
The weights couple the samples of one batch, so a sample depends on its batch mates: inherent to the method
(per-sample seeds still fix the noise). Our choices: the factor ``B`` keeps the mean weight at 1, so ``scale``
means what it means for plain guidance; the weights are constants (not differentiated); ``|t| < 1e-8`` is plain.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..diffusion.parameterization import per_sample
from ..diffusion.plug import GuidanceState
from .log_likelihood import ClassifierTerm, log_likelihood


def tilt_weights(log_p: Tensor, tilt: float) -> Tensor:
    """``B softmax_b(tilt * log p_b)`` (B,); all ones for ``|tilt| < 1e-8``."""
    if abs(tilt) < 1e-8:
        return torch.ones_like(log_p)
    return log_p.shape[0] * torch.softmax(tilt * log_p, dim=0)


class TiltedGuidance(ClassifierTerm):
    """``g_b = scale * B softmax_b(tilt log p(y_b|x_b)) ∇ log p(y_b|x_b)`` (paper's tilt: -0.2).

    ``log p`` is the tempered log-likelihood of :mod:`.log_likelihood` (``tau1``, ``tau2``) on ``input``
    (``"x0_hat"``: an off-the-shelf classifier, the paper's setting; ``"x_t"``: a noisy one).
    """


    couples_batch = True
    def __init__(self, classifier: nn.Module, scale: float = 1.0, tilt: float = -0.2, tau1: float = 1.0,
                 tau2: float = 1.0, input: str = "x0_hat", through_denoiser: bool = False,
                 clip_x0: bool | None = None, schedule: Callable | None = None):
        super().__init__(classifier, scale=scale, schedule=schedule, input=input, through_denoiser=through_denoiser,
                         clip_x0=clip_x0)
        self.tilt = float(tilt)
        self.tau1, self.tau2 = float(tau1), float(tau2)
        self._objective = functools.partial(log_likelihood, tau1=self.tau1, tau2=self.tau2)

    def gradient(self, state: GuidanceState) -> Tensor:
        g, log_p, _ = self.objective_gradient(state, self._objective)
        return per_sample(tilt_weights(log_p, self.tilt), g) * g
