"""Guidance-weight schedules: a multiplier of a term's correction that depends on where sampling is.

A schedule is any callable ``weight(step, num_steps, t) -> float | Tensor (B,)`` with ``step = 0`` the first
(noisiest) step and ``t`` the continuous model time (B,). Terms take one through their ``schedule`` argument.
The EluCD sine factors (Ma et al., §4.5 and alg. 2) are plain functions here because they also need the
sampler's variances or its own step count.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from ..diffusion.ddpm import ddpm_posterior
from ..diffusion.schedules import VPSchedule


class ConstantSchedule:
    """``w = value`` at every step."""

    def __init__(self, value: float = 1.0):
        self.value = float(value)

    def __call__(self, step: int, num_steps: int, t: Tensor | None = None) -> float:
        return self.value


class LinearSchedule:
    """``w`` goes linearly from ``start`` (first step) to ``end`` (last step); by default from 1 to 0."""

    def __init__(self, start: float = 1.0, end: float = 0.0):
        self.start, self.end = float(start), float(end)

    def __call__(self, step: int, num_steps: int, t: Tensor | None = None) -> float:
        progress = step / (num_steps - 1) if num_steps > 1 else 0.0
        return self.start + (self.end - self.start) * progress


class TimeIntervalSchedule:
    """``w = 1`` for model time ``t`` in ``[t_min, t_max]``, else 0 (guidance in a limited interval,
    Kynkäänniemi et al. 2024). Per sample."""

    def __init__(self, t_min: float = 0.0, t_max: float = 1.0):
        if not 0.0 <= t_min <= t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min <= t_max <= 1, got t_min={t_min}, t_max={t_max}")
        self.t_min, self.t_max = float(t_min), float(t_max)

    def __call__(self, step: int, num_steps: int, t: Tensor | None = None) -> Tensor:
        if t is None:
            raise ValueError("TimeIntervalSchedule needs the model time t; this caller does not provide it")
        return ((t >= self.t_min) & (t <= self.t_max)).to(t.dtype)


def reverse_index(step: int, num_steps: int) -> int:
    """The (respaced) index ``i`` that runs ``T-1 -> 0`` while ``step`` runs ``0 -> T-1``."""
    return num_steps - 1 - step


def sine_boost_factor(step: int, num_steps: int, gamma: float, variance: Tensor, max_variance: Tensor) -> Tensor:
    """EluCD's DDPM schedule as a multiplier of ``g`` (Ma et al., §4.5, docs/math.md §3.4).

    The paper's mean shift is ``(Sigma_t + max(gamma Sigma_max sin(pi i / T), 0)) s g`` with ``i`` the respaced
    index (T-1 -> 0). The sampler applies ``mu + Sigma_t g``, so the term multiplies its ``g`` by
    ``1 + max(gamma Sigma_max sin(pi i / T), 0) / Sigma_t``; where the added term is zero the factor is exactly 1
    (this also covers a zero variance at the last step).
    """
    i = reverse_index(step, num_steps)
    variance = torch.as_tensor(variance)
    max_variance = torch.as_tensor(max_variance, dtype=variance.dtype, device=variance.device)
    added = (gamma * max_variance * math.sin(math.pi * i / num_steps)).clamp(min=0)
    boosted = 1 + added / variance
    return torch.where(added > 0, boosted, torch.ones_like(boosted))  # 0/0 at a zero variance -> 1


#: a setting to define the sine boost against: (schedule, training steps, DDPM steps). "linear-250" is EluCD's DDPM
#: setting (ADM's linear betas, 250 respaced steps; Ma et al., app. C)
SINE_REFERENCES = {"linear-250": ("linear", 1000, 250)}


def ddpm_step_noise(schedule: VPSchedule, num_steps: int) -> tuple[Tensor, Tensor]:
    """Per DDPM step in sampling order (step 0 the noisiest): the step's ``abar_t`` and its posterior variance
    ``Sigma_t`` (:func:`~lightning_guidance.diffusion.ddpm.ddpm_posterior`, on the respaced schedule), float64."""
    abars = schedule.respace(num_steps)[0].alphas_cumprod.tolist()
    steps = range(len(abars) - 1, -1, -1)
    variance = [ddpm_posterior(0.0, 0.0, abars[k], abars[k - 1] if k > 0 else 1.0)[1] for k in steps]
    return torch.tensor([abars[k] for k in steps], dtype=torch.float64), torch.tensor(variance, dtype=torch.float64)


def sine_boost_factors(schedule: VPSchedule, num_steps: int, gamma: float) -> Tensor:
    """The factor :func:`sine_boost_factor` multiplies ``g`` by at each DDPM step (sampling order) on ``schedule``
    with ``num_steps`` steps, ``Sigma_max`` the first step's variance as in the sampler (with its default ``small``
    variance; under ``variance: large`` the term reads the sampler's own ``Sigma_t``).

    How much the boost multiplies guidance depends on the schedule: at ``gamma = 0.3`` the median step's factor is
    about 1.6 on EluCD's linear schedule with 250 steps (at most 4.4), but 5.9 on a cosine schedule with 50 steps (at
    most 467), where ``Sigma_max`` (the first variance, near 1) dwarfs the later ``Sigma_t``.
    """
    _, variance = ddpm_step_noise(schedule, num_steps)
    return torch.stack([sine_boost_factor(step, len(variance), gamma, v, variance[0]) for step, v in
                        enumerate(variance)])


def reference_sine_boost(abar: Tensor, gamma: float, reference: str = "linear-250") -> Tensor:
    """A schedule-invariant sine boost: the factor the ``reference`` setting's DDPM sampler applies at the same noise
    level, ``f_ref(log SNR)`` with ``log SNR = log(abar / (1 - abar))``, piecewise linear between the reference's
    steps and held at its end values outside them (docs/math.md §3.4).

    The paper's factor ``1 + gamma Sigma_max sin(pi i / T) / Sigma_t`` depends on the schedule and the step count
    through ``Sigma_max / Sigma_t``; this one depends on the noise level only, so ``gamma`` means on any schedule and
    any step count what it means in EluCD's setting.
    """
    if reference not in SINE_REFERENCES:
        raise ValueError(f"unknown sine boost reference {reference!r}; known: {sorted(SINE_REFERENCES)}")
    ref_log_snr, factors = _reference_table(reference, float(gamma))
    abar = torch.as_tensor(abar, dtype=torch.float64)
    log_snr = (abar / (1 - abar)).log().detach().cpu().numpy()
    return torch.as_tensor(np.interp(log_snr, ref_log_snr, factors), dtype=torch.float64).to(abar.device)


def boost_per_step(schedule: str, train_steps: int, num_steps: int, gamma: float,
                   reference: str | None = None) -> Tensor:
    """The factor the sine boost multiplies ``g`` by at each of ``num_steps`` DDPM steps (sampling order) of the
    ``schedule`` named as in a config (``cosine``, 1000 training steps): the paper's formula on that schedule
    (``reference`` None), or the schedule-invariant one that ``OffTheShelfGuidance(sine_reference=reference)``
    applies (:func:`reference_sine_boost`)."""
    vp = VPSchedule.from_name(schedule, train_steps)
    if reference is None:
        return sine_boost_factors(vp, num_steps, gamma)
    return reference_sine_boost(ddpm_step_noise(vp, num_steps)[0], gamma, reference)


def sine_boost_settings(schedule: str, train_steps: int, num_steps: int, gamma: float,
                        reference: str = "linear-250") -> dict[str, list[float]]:
    """The boost per DDPM step in three settings: as ``OffTheShelfGuidance(sine_reference=reference)`` applies it on
    ``schedule`` with ``num_steps`` steps, as the paper's formula would there, and in the reference's own setting."""
    kind, ref_train, ref_steps = SINE_REFERENCES[reference]
    return {f"ours (gamma defined against {reference})":
            boost_per_step(schedule, train_steps, num_steps, gamma, reference).tolist(),
            f"paper's formula on ours ({schedule}, {num_steps} steps)":
            boost_per_step(schedule, train_steps, num_steps, gamma).tolist(),
            f"EluCD's setting ({kind}, {ref_steps} steps)": boost_per_step(kind, ref_train, ref_steps, gamma).tolist()}


@functools.lru_cache(maxsize=32)
def _reference_table(reference: str, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """The reference's log SNR per step (increasing along the sampling order) and its boost factor there."""
    kind, train_steps, steps = SINE_REFERENCES[reference]
    schedule = VPSchedule.from_name(kind, train_steps)
    abar, _ = ddpm_step_noise(schedule, steps)
    return (abar / (1 - abar)).log().numpy(), sine_boost_factors(schedule, steps, gamma).numpy()


def edm_sine_weight(step: int, num_steps: int, g_max: float, gamma: float) -> float:
    """EluCD's EDM weight (Ma et al., alg. 2): ``w_i = max(g_max (N+1-i)/(N+1), 1e-5) + gamma g_max sin(pi i / N)``,
    ``i = step`` in ``0..N-1``."""
    n = num_steps
    return max(g_max * (n + 1 - step) / (n + 1), 1e-5) + gamma * g_max * math.sin(math.pi * step / n)
