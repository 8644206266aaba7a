"""Classifier guidance with a noisy, time-dependent classifier (Dhariwal & Nichol 2021, §4, alg. 1-2)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..diffusion.plug import GuidanceState
from .log_likelihood import ClassifierTerm, log_likelihood


class ClassifierGuidance(ClassifierTerm):
    """``g = scale * ∇_{x_t} log softmax(f(x_t, t))_y``; ``classifier(x, t) -> logits (B, K)`` sees the noisy state.

    Runs on every sampler (DDPM mean shift, DDIM eps shift, EDM denoiser shift: see :mod:`lightning_guidance.diffusion.plug`).
    """

    def __init__(self, classifier: nn.Module, scale: float = 1.0, schedule: Callable | None = None):
        super().__init__(classifier, scale=scale, schedule=schedule, input="x_t")

    def gradient(self, state: GuidanceState) -> Tensor:
        g, _, _ = self.objective_gradient(state, log_likelihood)
        return g
