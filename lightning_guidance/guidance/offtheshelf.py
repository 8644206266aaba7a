"""Off-the-shelf classifier guidance (EluCD; Ma et al., "Elucidating the design space of classifier-guided
diffusion generation"; docs/math.md §3).

Four independent switches: the classifier reads the denoised estimate (``input``, ``through_denoiser``), its ReLUs
are smoothed (done by the adapter in ``nets/offtheshelf.py``, not here), the joint/marginal temperatures
(``tau1``, ``tau2``), and the sine-boosted schedule (``sine_gamma``; on EDM with ``edm_g_max``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..diffusion.denoiser import DenoiserOutput
from ..diffusion.parameterization import per_sample
from ..diffusion.plug import GuidanceState
from .log_likelihood import ClassifierTerm, log_likelihood, per_sample_rms
from .schedules import SINE_REFERENCES, edm_sine_weight, reference_sine_boost, sine_boost_factor


class OffTheShelfGuidance(ClassifierTerm):
    """``g = scale * ∇ [tau1 f_y(x0_hat) - logsumexp(tau2 f(x0_hat))]``, ``x0_hat = clamp(x0_pred, -1, 1)``.

    Reference settings (EluCD app. C): DDPM ``tau1=1, tau2=0.5, sine_gamma=0.3, scale=1`` (250 steps);
    EDM ``tau1=1, tau2=0, sine_gamma=0.3, edm_g_max=0.004`` (10/18 steps; 0.0018 at 36, 0.001 at 250).

    Sine boost (``sine_gamma != 0``):

    - DDPM: ``g`` is multiplied by ``1 + max(gamma Sigma_max sin(pi i / T), 0) / Sigma_t`` (``i`` runs T-1 -> 0),
      so the sampler's ``mu + Sigma_t g`` is the paper's ``mu + (Sigma_t + gamma Sigma_max sin) s g``. That factor
      depends on the schedule and step count (``guidance.schedules.sine_boost_factors``); ``sine_reference:
      linear-250`` instead takes the factor EluCD's own setting applies at the same noise level
      (``guidance.schedules.reference_sine_boost``), so that ``gamma`` means the same on any schedule.
    - DDIM: not supported (it has no step variance ``Sigma_t`` for the boost to be defined against); our choice
      is to refuse rather than invent an equivalent.
    - EDM: only through ``edm_g_max`` (the boost is part of the EDM weight ``w_i``).

    EDM rule (``edm_g_max`` set; EluCD alg. 2): before each denoiser call the sampler adds
    :meth:`edm_nudge` to the VE state, ``scale * w_i * g / rms(g) * rms(x)`` per sample with
    ``w_i = max(g_max (N+1-i)/(N+1), 1e-5) + gamma g_max sin(pi i / N)``, and this term's regular score
    correction on EDM is zero (the nudge replaces it). Our choices where the paper is silent: the nudge costs one
    extra denoiser call at the current state (for its ``x0_hat``); ``scale`` multiplies the nudge but ``schedule``
    does not (``w_i`` is its schedule); ``rms(g)`` is floored at the smallest normal float so that a zero gradient
    gives a zero nudge.
    """

    def __init__(self, classifier: nn.Module, scale: float = 1.0, tau1: float = 1.0, tau2: float = 1.0,
                 input: str = "x0_hat", through_denoiser: bool = False, sine_gamma: float = 0.0,
                 edm_g_max: float | None = None, clip_x0: bool | None = None, schedule: Callable | None = None,
                 sine_reference: str | None = None):
        super().__init__(classifier, scale=scale, schedule=schedule, input=input, through_denoiser=through_denoiser,
                         clip_x0=clip_x0)
        if edm_g_max is not None and input != "x0_hat":
            raise ValueError("edm_g_max (EluCD's EDM rule) needs input='x0_hat'")
        self.tau1, self.tau2 = float(tau1), float(tau2)
        self.sine_gamma = float(sine_gamma)
        if sine_reference is not None:
            if sine_reference not in SINE_REFERENCES:
                raise ValueError(f"unknown sine_reference {sine_reference!r}; known: {sorted(SINE_REFERENCES)} "
                                 "(or null: the paper's rule on this sampler's own variances)")
            if edm_g_max is not None:
                raise ValueError("sine_reference defines the DDPM boost; EluCD's EDM rule (edm_g_max) has its own")
            # an attribute (and so in the shard hash) only when set: shards made before it existed keep their hash
            self.sine_reference = sine_reference
        self.edm_g_max = None if edm_g_max is None else float(edm_g_max)
        kinds = ["ddpm"]
        if self.sine_gamma == 0.0:
            kinds.append("ddim")
        if self.sine_gamma == 0.0 or self.edm_g_max is not None:
            kinds.append("edm")
        self.supported_samplers = tuple(kinds)
        self._objective = functools.partial(log_likelihood, tau1=self.tau1, tau2=self.tau2)

    @property
    def differentiates_denoiser(self) -> bool:
        """Not with the EDM rule: its nudge makes its own denoiser call (and on EDM the score correction is zero)."""
        return self.through_denoiser and self.edm_g_max is None

    def gradient(self, state: GuidanceState) -> Tensor:
        if state.sampler == "edm" and self.edm_g_max is not None:
            return torch.zeros_like(state.x_t)  # the EDM nudge does the guiding
        g, _, _ = self.objective_gradient(state, self._objective)
        if self.sine_gamma != 0.0 and state.sampler == "ddpm":
            if state.variance is None or state.max_variance is None:
                raise ValueError("OffTheShelfGuidance(sine_gamma != 0) needs state.variance and state.max_variance "
                                 "from the DDPM sampler")
            reference = getattr(self, "sine_reference", None)
            factor = (reference_sine_boost(state.abar, self.sine_gamma, reference) if reference is not None else
                      sine_boost_factor(state.step, state.num_steps, self.sine_gamma, state.variance,
                                        state.max_variance))
            g = per_sample(factor.to(g.device), g) * g
        return g

    def edm_nudge(self, x: Tensor, sigma: Tensor, step: int, num_steps: int,
                  denoise: Callable[[Tensor], DenoiserOutput], y: Tensor | None = None) -> Tensor | None:
        if self.edm_g_max is None:
            return None
        if y is None:
            raise ValueError("OffTheShelfGuidance.edm_nudge needs the class labels y; the EDM sampler must pass y=")
        g, _, _ = self.x0_hat_gradient(x, y, denoise, self._objective)
        w = edm_sine_weight(step, num_steps, self.edm_g_max, self.sine_gamma)
        rms_g = per_sample_rms(g).clamp(min=torch.finfo(g.dtype).tiny)
        return self.scale * w * g / rms_g * per_sample_rms(x)
