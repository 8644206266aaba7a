"""DDIM sampling (Song, Meng & Ermon 2021) over the respaced step indices, eta = 0 deterministic."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .plug import GuidanceState, GuidanceTerm, denoise_for_guidance, total_guidance
from .cfg_rule import SamplingStep
from .denoiser import Denoiser
from .noise import PerSampleNoise
from .parameterization import eps_to_x0, x0_to_eps
from .schedules import VPSchedule
from .sampler_steps import begin_sampling, end_of_step


def ddim_step(x0: Tensor, eps: Tensor, abar_t: float, abar_prev: float, eta: float = 0.0,
              noise: Tensor | None = None) -> Tensor:
    """Song et al. 2021, eq. 12: ``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z``.

    ``sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)`` (eq. 16); eta = 1 is DDPM's
    posterior variance, eta = 0 the deterministic DDIM. ``noise`` (z) is needed when ``sigma > 0``.
    """
    sigma = eta * math.sqrt((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev))
    # for eta <= 1, sigma^2 <= 1 - abar_prev; eta > 1 (more noise than DDPM) leaves no room for the eps direction
    x_prev = math.sqrt(abar_prev) * x0 + math.sqrt(max(1.0 - abar_prev - sigma**2, 0.0)) * eps
    if sigma > 0:
        if noise is None:
            raise ValueError("DDIM with eta > 0 needs a noise tensor for this step")
        x_prev = x_prev + sigma * noise
    return x_prev


#: a guidance push that moves DDIM's first state by more than this (RMS; the state's own scale is 1) is warned about
FIRST_MOVE_WARNING = 1.0


def eps_shift_gain(abar_t: float, abar_prev: float) -> float:
    """How much one deterministic DDIM step multiplies a shift of eps in x_prev:
    ``sqrt(abar_prev (1 - abar_t) / abar_t) - sqrt(1 - abar_prev)`` (eq. 12 with x0 rebuilt from the shifted eps).
    About 1300 for the first of 25 steps on the cosine schedule (abar_T ~ 2e-9), 0.5 on the linear one."""
    return math.sqrt(abar_prev * (1.0 - abar_t) / abar_t) - math.sqrt(1.0 - abar_prev)


def warn_if_thrown_off(g: Tensor, abar_t: float, abar_prev: float) -> None:
    """Warn when the first step's guidance moves the state by more than :data:`FIRST_MOVE_WARNING` (RMS)."""
    gain = eps_shift_gain(abar_t, abar_prev)
    move = abs(gain) * math.sqrt(1.0 - abar_t) * float(g.detach().pow(2).mean().sqrt())
    if move > FIRST_MOVE_WARNING:
        warnings.warn(f"DDIM's first step moves the state by {move:.3g} (RMS) for this guidance: it multiplies the "
                      f"guidance's eps shift by {gain:.0f} on this schedule (abar_T = {abar_t:.2g}), and a push that "
                      "does not vanish at pure noise (a clean classifier on x0_hat, CFG + classifier) throws the "
                      "samples off; sample with ddpm, whose step moves the mean by its variance times g",
                      stacklevel=3)


def ddim_sample(denoiser: Denoiser, schedule: VPSchedule, labels: Tensor, noise: PerSampleNoise,
                shape: tuple[int, ...], *, num_steps: int = 50, eta: float = 0.0, guidance: Sequence[GuidanceTerm] = (),
                on_step: Callable[[int, int], None] | None = None) -> Tensor:
    """DDIM from x_T to x_0 over ``schedule.respaced_indices(num_steps)`` (the network sees the original indices).

    The update uses the denoiser's ``out.x0`` (clipped if the denoiser clips) and the ``eps`` implied by it.
    Guidance (Dhariwal & Nichol 2021, alg. 2; guided-diffusion's ``condition_score``): ``eps <- eps - sqrt(1 - abar)
    g`` on that implied eps, then ``x0_hat`` is rebuilt from the shifted eps and not clipped again (docs/math.md §2).
    Randomness: x_T is each sample's first draw; with eta > 0 every step draws once more.
    Steps count from 0 (the noisiest); ``on_step(step, num_steps)`` runs after each.
    """
    batch = begin_sampling("ddim", labels, noise, guidance, torch.float32, noise.device)
    if eta < 0:
        raise ValueError(f"DDIM eta must be >= 0, got {eta}")
    respaced, kept = schedule.respace(num_steps)
    abars = respaced.alphas_cumprod.tolist()
    n = len(abars)

    # x_T ~ N(0, I), the first draw of every sample's generator
    x = noise.randn(shape)
    for step, k in enumerate(range(n - 1, -1, -1)):
        abar_t, abar_prev = abars[k], (abars[k - 1] if k > 0 else 1.0)
        t, abar = batch(schedule.model_time(kept[k])), batch(abar_t)

        # Predict x0 (clipped by the denoiser if it clips) and the eps consistent with it
        out, graph = denoise_for_guidance(denoiser, guidance, x, t, abar, labels, SamplingStep(step, n))
        x0 = out.x0
        eps = x0_to_eps(x0, x, abar)

        # Guidance shifts that eps; x0_hat is rebuilt from it and not clipped again
        state = GuidanceState(x_t=x, t=t, abar=abar, y=labels, out=out, step=step, num_steps=n, sampler="ddim",
                              denoiser=denoiser, denoiser_graph=graph)
        g = total_guidance(guidance, state)
        if g is not None:
            if step == 0:
                warn_if_thrown_off(g, abar_t, abar_prev)
            eps = eps - math.sqrt(1.0 - abar_t) * g
            x0 = eps_to_x0(eps, x, abar)

        # DDIM update
        z = noise.randn_like(x) if eta > 0 else None
        x = ddim_step(x0, eps, abar_t, abar_prev, eta, z)
        end_of_step(x, "DDIM", step, n, on_step)
    return x
