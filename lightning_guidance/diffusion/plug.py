"""The sampler's plug: the state a guidance term reads, the term protocol, and the sampler kinds.

It lives with the samplers (``diffusion/``) so that a sampler needs nothing above it; the terms themselves live in
``guidance/`` and build on this contract.

A term returns ``g``, a correction of the score in VP coordinates, ``g ≈ s ∇_{x_t} log p(y | x_t)``, already
multiplied by its scale and schedule weight. Each sampler family converts ``g`` in exactly one place, always
after the denoiser's ``x0_hat`` was clipped (if the denoiser clips) and never followed by another clip
(docs/math.md §2):

- DDPM ancestral: mean shift ``mu + Sigma_t g`` (Dhariwal & Nichol 2021, alg. 1);
- DDIM: ``eps <- eps - sqrt(1 - abar) g`` on the eps implied by ``x0_hat``, then ``x0_hat`` is rebuilt (alg. 2);
- EDM Heun (VE state ``x = x_VP / sqrt(abar)``): ``D <- D + sigma^2 sqrt(abar) g`` (chain rule, docs/math.md §7).

Nothing in a sampler knows which guidance it runs; a term that needs more than ``g`` (e.g. EluCD's EDM
rule, which nudges the state before the denoiser call) overrides :meth:`GuidanceTerm.edm_nudge`. A term that
differentiates through the denoiser says so (:attr:`GuidanceTerm.differentiates_denoiser`): the sampler then makes
its one denoiser call of the step at a leaf ``x_t`` with the graph kept (:func:`denoise_for_guidance`), and the term
back-propagates through that call instead of repeating the forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .denoiser import Denoiser, DenoiserOutput

SAMPLER_KINDS = ("ddpm", "ddim", "edm")


@dataclass
class DenoiserGraph:
    """The step's denoiser call recorded by autograd: ``out`` (attached) as a function of the leaf ``x_t``."""

    x_t: Tensor  # a leaf that requires grad, equal to the state's x_t
    out: DenoiserOutput


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
    denoiser_graph: DenoiserGraph | None = None  # the step's denoiser call at a leaf x_t, graph kept (see above)
    variance: Tensor | None = None  # DDPM: this step's posterior variance Sigma_t (B,)
    max_variance: Tensor | None = None  # DDPM: the first (largest) step's variance


class GuidanceTerm:
    """Base class; subclasses implement :meth:`gradient`. ``scale`` multiplies the result."""

    #: sampler kinds this term can run on; a sampler raises a clear error for the others
    supported_samplers: tuple[str, ...] = SAMPLER_KINDS
    #: True when a sample's correction depends on the other samples of its batch (tilted guidance)
    couples_batch: bool = False
    #: True when the term back-propagates through the denoiser (it reads ``state.denoiser_graph``)
    differentiates_denoiser: bool = False

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


def denoise_for_guidance(denoiser: Denoiser, terms: Sequence[GuidanceTerm], x_t: Tensor, t: Tensor, abar: Tensor,
                         y: Tensor, step) -> tuple[DenoiserOutput, DenoiserGraph | None]:
    """The step's one denoiser call: ``(out detached, None)``, or, when a term differentiates through the denoiser,
    the call made at a leaf copy of ``x_t`` with autograd on, returned as ``(out detached, its graph)``.

    So such a term costs the denoiser's backward only, not a second forward (and a stateful CFG rule, e.g. APG's
    momentum, sees one call per step). Autograd is switched on here although samplers run under ``no_grad`` or
    ``torch.inference_mode`` (Lightning's predict), and the inference tensors autograd may save are cloned.
    """
    if not any(getattr(term, "differentiates_denoiser", False) for term in terms):
        return denoiser(x_t, t, abar, y, step=step), None
    with torch.inference_mode(False), torch.enable_grad():
        leaf = x_t.detach().clone().requires_grad_(True)
        out = denoiser(leaf, t.clone(), abar.clone(), y.clone(), step=step)
    detached = DenoiserOutput(**{f.name: None if getattr(out, f.name) is None else getattr(out, f.name).detach()
                                 for f in fields(out)})
    return detached, DenoiserGraph(leaf, out)


def total_guidance(terms: Sequence[GuidanceTerm], state: GuidanceState) -> Tensor | None:
    """Sum of every term's correction; None if no term corrects (a term that only watches returns None). Raises on a
    non-finite correction (with the step)."""
    total = None
    for term in terms:
        g = term(state)
        if g is None:
            continue
        if g.shape != state.x_t.shape:
            raise ValueError(f"{type(term).__name__} returned shape {tuple(g.shape)}, expected {tuple(state.x_t.shape)}")
        if not torch.isfinite(g).all():
            raise FloatingPointError(f"{type(term).__name__} produced a non-finite guidance gradient at sampling "
                                     f"step {state.step}/{state.num_steps} ({state.sampler}); lower its scale or "
                                     "check the classifier")
        total = g if total is None else total + g
    return total
