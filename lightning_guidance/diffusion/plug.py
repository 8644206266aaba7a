"""The sampler's plug: the state a guidance term reads, the term protocol, and the sampler kinds.

It lives with the samplers (``diffusion/``) so that a sampler needs nothing above it; the terms themselves live in
``guidance/`` and build on this contract.

A term returns ``g``, a correction of the score in VP coordinates, ``g ≈ s ∇_{x_t} log p(y | x_t)``, already
multiplied by its scale and schedule weight. Each sampler family converts ``g`` in exactly one place:

- DDPM ancestral: mean shift ``mu + Sigma_t g`` (Dhariwal & Nichol 2021, alg. 1);
- DDIM: ``eps <- eps - sqrt(1 - abar) g``, then ``x0_hat`` is recomputed (alg. 2);
- EDM Heun (VE state ``x = x_VP / sqrt(abar)``): ``D <- D + sigma^2 sqrt(abar) g`` (chain rule, docs/math.md §7).

Nothing in a sampler knows which guidance it runs; a term that needs more than ``g`` (e.g. EluCD's EDM
rule, which nudges the state before the denoiser call) overrides :meth:`GuidanceTerm.edm_nudge`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .denoiser import Denoiser, DenoiserOutput

SAMPLER_KINDS = ("ddpm", "ddim", "edm")


@dataclass
class GuidanceState:
    """Everything a term may read at one sampling step (VP coordinates)."""

    x_t: Tensor  # current state (B, ...)
    t: Tensor  # continuous model time (B,)
    abar: Tensor  # (B,)
    y: Tensor  # requested classes (B,)
    out: DenoiserOutput  # the (CFG-combined) prediction at x_t
    step: int  # 0 = first (noisiest) step
    num_steps: int
    sampler: str  # one of SAMPLER_KINDS
    denoiser: Denoiser | None = None  # for terms that differentiate through the denoiser
    variance: Tensor | None = None  # DDPM: this step's posterior variance Sigma_t (B,)
    max_variance: Tensor | None = None  # DDPM: the first (largest) step's variance


class GuidanceTerm:
    """Base class; subclasses implement :meth:`gradient`. ``scale`` multiplies the result."""

    #: sampler kinds this term can run on; a sampler raises a clear error for the others
    supported_samplers: tuple[str, ...] = SAMPLER_KINDS
    #: True when a sample's correction depends on the other samples of its batch (tilted guidance)
    couples_batch: bool = False

    def __init__(self, scale: float = 1.0):
        self.scale = float(scale)

    def gradient(self, state: GuidanceState) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, state: GuidanceState) -> Tensor:
        return self.scale * self.gradient(state)

    def edm_nudge(self, x: Tensor, sigma: Tensor, step: int, num_steps: int,
                  denoise: Callable[[Tensor], DenoiserOutput], y: Tensor | None = None) -> Tensor | None:
        """EDM only: a displacement added to the VE state before the denoiser call, or None (default).

        ``y`` are the requested classes (B,); the EDM sampler passes them (``y=labels``).
        """
        return None


def check_guidance_for_sampler(terms: Sequence[GuidanceTerm], sampler: str) -> None:
    for term in terms:
        if sampler not in term.supported_samplers:
            raise ValueError(f"{type(term).__name__} cannot run on the {sampler} sampler "
                             f"(supported: {', '.join(term.supported_samplers)})")


def total_guidance(terms: Sequence[GuidanceTerm], state: GuidanceState) -> Tensor | None:
    """Sum of every term's correction; None if no term. Raises on a non-finite correction (with the step)."""
    if not terms:
        return None
    total = torch.zeros_like(state.x_t)
    for term in terms:
        g = term(state)
        if g.shape != state.x_t.shape:
            raise ValueError(f"{type(term).__name__} returned shape {tuple(g.shape)}, expected {tuple(state.x_t.shape)}")
        if not torch.isfinite(g).all():
            raise FloatingPointError(f"{type(term).__name__} produced a non-finite guidance gradient at sampling "
                                     f"step {state.step}/{state.num_steps} ({state.sampler}); lower its scale or "
                                     "check the classifier")
        total = total + g
    return total
