"""Classifier guidance on top of classifier-free guidance (EluCD §5.3, alg. 3, for DiT; docs/math.md §3).

The paper normalises the classifier gradient and adds it to the CFG noise difference; the exact normalisation
is unpublished. **Our choice:** rescale the gradient per sample to the RMS of the CFG score difference
``d = (eps_cond - eps_uncond) / sqrt(1 - abar)`` (``-d`` is ``∇ log p_t(x|y) - ∇ log p_t(x)``), times ``scale``:
``g = scale * ∇ log p(y|x0_hat) / rms(∇ log p) * rms(d)``. So ``scale = 1`` adds a classifier push as strong as
the push CFG itself adds per unit of ``cfg_scale``. For a latent model, give a classifier that decodes first
(``classifier(z) = f(D(z))``) and the gradient is ``∇_z log p(y | D(z))``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..diffusion.parameterization import per_sample
from ..diffusion.plug import GuidanceState
from .log_likelihood import ClassifierTerm, log_likelihood, per_sample_rms


class CFGPlusClassifierGuidance(ClassifierTerm):
    """Classifier gradient (tempered, on ``x0_hat`` by default, like :class:`OffTheShelfGuidance`) rescaled per
    sample to the RMS of the CFG score difference. Needs a denoiser that runs CFG (``state.out.eps_cond``)."""

    def __init__(self, classifier: nn.Module, scale: float = 1.0, tau1: float = 1.0, tau2: float = 1.0,
                 input: str = "x0_hat", through_denoiser: bool = False, clip_x0: bool | None = None,
                 schedule: Callable | None = None):
        super().__init__(classifier, scale=scale, schedule=schedule, input=input, through_denoiser=through_denoiser,
                         clip_x0=clip_x0)
        self.tau1, self.tau2 = float(tau1), float(tau2)
        self._objective = functools.partial(log_likelihood, tau1=self.tau1, tau2=self.tau2)

    def gradient(self, state: GuidanceState) -> Tensor:
        out = state.out
        if out.eps_cond is None or out.eps_uncond is None:
            raise ValueError("CFGPlusClassifierGuidance needs a denoiser that runs classifier-free guidance "
                             "(set its cfg_scale != 1), so that eps_cond and eps_uncond exist")
        g, _, _ = self.objective_gradient(state, self._objective)
        abar = per_sample(state.abar, g)
        cfg_difference = (out.eps_cond - out.eps_uncond) / (1 - abar).sqrt()
        return g / per_sample_rms(g).clamp(min=torch.finfo(g.dtype).tiny) * per_sample_rms(cfg_difference)
