"""f-divergence guidance (Javid, Bagheri & González-Prelcic 2025; docs/math.md §4).

Target ``q = (1 - eps) e_y + eps / K`` (label smoothing ``eps``), classifier ``p = softmax(f)``; the correction is
``-∇_x D(q, p)``, computed by autograd through ``D`` (the closed forms of docs/math.md §4 are the tests' oracles):

- ``reverse_kl``: ``KL(p || q)`` (needs ``eps > 0``: ``q`` must be positive where ``p`` is);
- ``forward_kl``: ``KL(q || p)`` (the cross-entropy gradient; ``eps = 0`` is plain classifier guidance);
- ``js``: ``JS = 1/2 KL(p || m) + 1/2 KL(q || m)``, ``m = (p + q) / 2``, natural log (the paper's best, FID 2.13);
- ``hellinger``: squared Hellinger ``1 - sum_i sqrt(p_i q_i)``.

Our choices where the paper is open: default ``js`` with ``eps = 0.1``; ``p`` is untempered; ``input="x0_hat"``
(off-the-shelf classifier, the paper's setting) by default.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..diffusion.plug import GuidanceState
from .log_likelihood import ClassifierTerm

DIVERGENCES = ("reverse_kl", "forward_kl", "js", "hellinger")


def smoothed_target_log(y: Tensor, num_classes: int, label_smoothing: float, dtype: torch.dtype) -> Tensor:
    """``log q`` with ``q = (1 - eps) e_y + eps / K`` (B, K); ``-inf`` where ``q = 0``."""
    q = F.one_hot(y, num_classes).to(dtype) * (1 - label_smoothing) + label_smoothing / num_classes
    return q.log()


def f_divergence(kind: str, log_p: Tensor, log_q: Tensor) -> Tensor:
    """``D(q, p)`` per sample (B,) from log-probabilities (B, K); zero-probability entries contribute 0."""
    p, q = log_p.exp(), log_q.exp()
    if kind == "forward_kl":
        return (torch.special.xlogy(q, q) - q * log_p).sum(dim=1)
    if kind == "reverse_kl":
        return (p * (log_p - log_q)).sum(dim=1)
    if kind == "js":
        log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
        return 0.5 * (p * (log_p - log_m)).sum(dim=1) + 0.5 * (torch.special.xlogy(q, q) - q * log_m).sum(dim=1)
    if kind == "hellinger":
        return 1 - torch.exp(0.5 * (log_p + log_q)).sum(dim=1)
    raise ValueError(f"unknown divergence {kind!r}; choose one of {DIVERGENCES}")


class DivergenceGuidance(ClassifierTerm):
    """``g = -scale ∇_x D(q, p(.|x))``; see the module doc for the divergences and the target ``q``."""

    def __init__(self, classifier: nn.Module, scale: float = 1.0, divergence: str = "js",
                 label_smoothing: float = 0.1, input: str = "x0_hat", through_denoiser: bool = False,
                 clip_x0: bool | None = None, schedule: Callable | None = None):
        super().__init__(classifier, scale=scale, schedule=schedule, input=input, through_denoiser=through_denoiser,
                         clip_x0=clip_x0)
        if divergence not in DIVERGENCES:
            raise ValueError(f"unknown divergence {divergence!r}; choose one of {DIVERGENCES}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if divergence == "reverse_kl" and label_smoothing == 0.0:
            raise ValueError("reverse_kl needs label_smoothing > 0 (KL(p || one-hot) is infinite)")
        self.divergence = divergence
        self.label_smoothing = float(label_smoothing)

    def negative_divergence(self, logits: Tensor, y: Tensor) -> Tensor:
        log_p = torch.log_softmax(logits, dim=1)
        log_q = smoothed_target_log(y, logits.shape[1], self.label_smoothing, logits.dtype)
        return -f_divergence(self.divergence, log_p, log_q)

    def gradient(self, state: GuidanceState) -> Tensor:
        g, _, _ = self.objective_gradient(state, self.negative_divergence)
        return g
