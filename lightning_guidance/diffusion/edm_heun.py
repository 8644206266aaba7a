"""EDM's stochastic Heun sampler (Karras et al. 2022, alg. 2) running a VP-trained model (docs/math.md §7)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .plug import DenoiserGraph, GuidanceState, GuidanceTerm, denoise_for_guidance, total_guidance
from .cfg_rule import SamplingStep
from .denoiser import Denoiser, DenoiserOutput
from .noise import PerSampleNoise
from .schedules import VPSchedule, edm_sigma_steps
from .sampler_steps import begin_sampling, end_of_step


def edm_heun_sample(denoiser: Denoiser, schedule: VPSchedule, labels: Tensor, noise: PerSampleNoise,
                    shape: tuple[int, ...], *, num_steps: int = 18, sigma_min: float | None = None,
                    sigma_max: float | None = None, rho: float = 7.0, S_churn: float = 0.0, S_min: float = 0.0,
                    S_max: float = float("inf"), S_noise: float = 1.0, guidance: Sequence[GuidanceTerm] = (),
                    on_step: Callable[[int, int], None] | None = None) -> Tensor:
    """Heun's 2nd-order sampler on the VE state ``x = x_VP / sqrt(abar)``, returning x at sigma = 0 (data space).

    VP preconditioning (Karras et al. 2022, tab. 1): ``D(x; sigma) = x - sigma eps(x / sqrt(1 + sigma^2), t(sigma))``
    with ``abar = 1 / (1 + sigma^2)`` and ``t(sigma)`` the schedule's (fractional) step of that sigma.
    ``sigma_min`` defaults to the schedule's smallest sigma and ``sigma_max`` to EDM's 80 (or the schedule's largest
    sigma if that is smaller: a cosine schedule reaches ~2e4, where 18 steps are far too coarse); both are clamped
    into the range the schedule was trained on.
    ``D`` is the denoiser's x0 estimate, clamped to [-1, 1] when the denoiser clips (``clip_x0``), as DDPM and DDIM
    use ``out.x0``. Guidance ``g`` (VP score) then enters as ``D <- D + sigma^2 sqrt(abar) g`` and is not clipped
    (the rule of docs/math.md §2); a term's ``edm_nudge`` displacement is
    added to the state before the step's first denoiser call. Randomness: the initial latent is each sample's
    first draw, churn draws once per step where gamma > 0. Time steps and the state are float64, as in EDM; the
    denoiser sees float32. Steps count from 0; ``on_step(step, num_steps)`` runs after each.
    """
    model_dtype = torch.float32
    batch = begin_sampling("edm", labels, noise, guidance, model_dtype, noise.device)
    clip_x0 = getattr(denoiser, "clip_x0", False)
    lo, hi = schedule.sigma_min, schedule.sigma_max
    sigma_min = min(max(lo if sigma_min is None else sigma_min, lo), hi)
    sigma_max = min(max(min(80.0, hi) if sigma_max is None else sigma_max, lo), hi)
    if not sigma_min < sigma_max:
        raise ValueError(f"EDM needs sigma_min < sigma_max within the schedule's range [{lo:.4g}, {hi:.4g}], "
                         f"got {sigma_min:.4g} and {sigma_max:.4g} after clamping")

    def vp_call(x: Tensor, sigma: float, step: int, terms: Sequence[GuidanceTerm] = ()
                ) -> tuple[DenoiserOutput, Tensor, Tensor, Tensor, DenoiserGraph | None]:
        """The VP denoiser at the VE state ``x`` during step ``step``: returns (out, x_VP, t, abar, the call's
        graph when one of ``terms`` differentiates through the denoiser)."""
        abar = 1.0 / (1.0 + sigma**2)
        x_vp = (x * math.sqrt(abar)).to(model_dtype)
        t, abar_b = batch(schedule.model_time(schedule.index_of_sigma(sigma))), batch(abar)
        out, graph = denoise_for_guidance(denoiser, terms, x_vp, t, abar_b, labels, SamplingStep(step, num_steps))
        return out, x_vp, t, abar_b, graph

    def denoise(x: Tensor, sigma: float, step: int) -> Tensor:
        """``D(x; sigma)`` (clipped if the denoiser clips), then the guidance correction of the score."""
        out, x_vp, t, abar, graph = vp_call(x, sigma, step, guidance)
        d = x - sigma * out.eps.to(torch.float64)  # = x0_hat in float64
        if clip_x0:
            d = d.clamp(-1, 1)
        state = GuidanceState(x_t=x_vp, t=t, abar=abar, y=labels, out=out, step=step, num_steps=num_steps,
                              sampler="edm", denoiser=denoiser, denoiser_graph=graph)
        g = total_guidance(guidance, state)
        if g is not None:
            d = d + sigma**2 * math.sqrt(1.0 / (1.0 + sigma**2)) * g.to(torch.float64)
        return d

    # Time step discretization (float64, sigma_N = 0 appended)
    t_steps = edm_sigma_steps(num_steps, sigma_min, sigma_max, rho).tolist()

    # Main sampling loop: the initial latent is the first draw of every sample's generator
    x_next = noise.randn(shape).to(torch.float64) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next

        # Increase noise temporarily
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0.0
        t_hat = t_cur + gamma * t_cur
        x_hat = x_cur
        if gamma > 0:
            x_hat = x_cur + math.sqrt(t_hat**2 - t_cur**2) * S_noise * noise.randn(shape).to(torch.float64)

        # Guidance that moves the state before the denoiser call (e.g. EluCD's EDM rule); a term gets the float32
        # VE state, sigma (B,) and a callable VE state -> the VP DenoiserOutput at this sigma
        nudges = [term.edm_nudge(x_hat.to(model_dtype), batch(t_hat), i, num_steps,
                                 lambda x, s=t_hat, i=i: vp_call(x, s, i)[0], y=labels) for term in guidance]
        for delta in nudges:
            if delta is not None:
                x_hat = x_hat + delta.to(torch.float64)

        # Euler step
        d_cur = (x_hat - denoise(x_hat, t_hat, i)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur

        # Apply 2nd order correction
        if i < num_steps - 1:
            d_prime = (x_next - denoise(x_next, t_next, i)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)

        end_of_step(x_next, "EDM", i, num_steps, on_step)
    return x_next.to(model_dtype)
