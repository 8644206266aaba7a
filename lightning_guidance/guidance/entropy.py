"""Adaptive entropy-regularised classifier guidance (Javid, Bagheri & González-Prelcic 2025; docs/math.md §4).

An overconfident classifier (``p(y|x) -> 1``) has ``∇ log p(y|x) -> 0``; two ways to keep a useful push:

- ``mode="scale"`` (default): ``g = c(x) ∇ log p(y|x)`` with ``c = clamp(H(uniform) / H(p(.|x)), 1, max_factor)``,
  ``H(uniform) = log K``. Our choices: the factor is a per-sample constant (not differentiated); it is clamped
  below at 1 (guidance is never weakened) and above at ``max_factor`` (default 10), since ``H -> 0`` sends it to
  infinity.
- ``mode="bonus"``: ``g = ∇ [log p(y|x) + eta H(p(.|x))]`` (default ``eta = 1``, our choice).

``log p`` is tempered (``tau1``, ``tau2``); ``H`` is the entropy of the untempered ``softmax(f)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from ..diffusion.parameterization import per_sample
from ..diffusion.plug import GuidanceState
from .log_likelihood import ClassifierTerm, entropy, log_likelihood

ENTROPY_MODES = ("scale", "bonus")


def entropy_scale_factor(logits: Tensor, max_factor: float) -> Tensor:
    """``clamp(log K / H(softmax(f)), 1, max_factor)`` per sample (B,)."""
    return (math.log(logits.shape[1]) / entropy(logits)).clamp(min=1.0, max=max_factor)


class EntropyAdaptiveGuidance(ClassifierTerm):
    """See the module doc. ``input``: ``"x0_hat"`` (off-the-shelf, the paper's setting) or ``"x_t"``."""

    def __init__(self, classifier: nn.Module, scale: float = 1.0, mode: str = "scale", max_factor: float = 10.0,
                 eta: float = 1.0, tau1: float = 1.0, tau2: float = 1.0, input: str = "x0_hat",
                 through_denoiser: bool = False, clip_x0: bool | None = None, schedule: Callable | None = None):
        super().__init__(classifier, scale=scale, schedule=schedule, input=input, through_denoiser=through_denoiser,
                         clip_x0=clip_x0)
        if mode not in ENTROPY_MODES:
            raise ValueError(f"unknown entropy guidance mode {mode!r}; choose one of {ENTROPY_MODES}")
        if max_factor < 1:
            raise ValueError(f"max_factor must be >= 1, got {max_factor}")
        self.mode = mode
        self.max_factor = float(max_factor)
        self.eta = float(eta)
        self.tau1, self.tau2 = float(tau1), float(tau2)

    def _log_p(self, logits: Tensor, y: Tensor) -> Tensor:
        return log_likelihood(logits, y, self.tau1, self.tau2)

    def _log_p_plus_entropy(self, logits: Tensor, y: Tensor) -> Tensor:
        return self._log_p(logits, y) + self.eta * entropy(logits)

    def gradient(self, state: GuidanceState) -> Tensor:
        if self.mode == "bonus":
            g, _, _ = self.objective_gradient(state, self._log_p_plus_entropy)
            return g
        g, _, logits = self.objective_gradient(state, self._log_p)
        return per_sample(entropy_scale_factor(logits, self.max_factor), g) * g
