"""Smooth ECE (Blasiok & Nakkiran 2023, "Smooth ECE: principled reliability diagrams via kernel smoothing").

For confidences ``c_i`` and correctness ``a_i``, residuals ``r_i = a_i - c_i`` are smoothed with a Gaussian kernel
of width ``sigma`` reflected at 0 and 1:

    smECE_sigma = ∫_0^1 |r^(z)| δ^(z) dz = ∫_0^1 |sum_i K(z, c_i) r_i| dz / ∫_0^1 sum_i K(z, c_i) dz,

and smECE is taken at the bandwidth where ``smECE_sigma = sigma`` (found by bisection). docs/math.md §4.

The discretisation is that of the reference estimator, relplot 1.0.3 (``relplot.smECE``), so the numbers agree with
it to float precision: each sample is split linearly between its two neighbours on a grid of
``M = max(2000, round(20 / sigma)) // 2 + 1`` points on [0, 1]; the grid is reflected once at each end and
convolved with the Gaussian density sampled on the same spacing and truncated to ``|z| <= 1/2``; the result is
interpolated linearly onto ``E = max(round(10 / sigma), 200)`` equispaced points, where the two integrals above are
sums. The bisection starts at ``sigma = 1`` and halves the bracket 10 times, keeping the upper end.

Written in torch so that the fixed-bandwidth form is differentiable in the confidences (calibration fine-tuning).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# relplot adds this to the smoothed density so that an empty region does not divide 0 by 0
_DENSITY_EPS = 1e-4


def _grid_sizes(sigma: float) -> tuple[int, int]:
    """(kernel grid points M, evaluation points E) that relplot 1.0.3 uses at bandwidth ``sigma``."""
    kernel_points = max(2000, round(20 / sigma)) // 2 + 1
    eval_points = max(round(10 / sigma), 200)
    return kernel_points, eval_points


def _deposit_on_grid(confidence: Tensor, values: Tensor, num_points: int) -> Tensor:
    """Split each value between the two grid points ``j/(M-1)`` around its confidence (linear weights).

    ``values``: (channels, N) -> (channels, M). Differentiable in ``confidence`` and ``values``.
    """
    position = confidence * (num_points - 1)
    left = position.detach().floor().long().clamp(0, num_points - 2)
    right_weight = position - left.to(position.dtype)
    grid = values.new_zeros(values.shape[0], num_points)
    grid = grid.index_add(1, left, values * (1 - right_weight))
    return grid.index_add(1, left + 1, values * right_weight)


def _reflected_gaussian_smooth(grid: Tensor, sigma: float) -> Tensor:
    """Convolve (channels, M) grid values with a Gaussian density reflected at 0 and 1 (relplot's kernel)."""
    num_points = grid.shape[-1]
    offsets = torch.linspace(0, 1, num_points, dtype=grid.dtype, device=grid.device) - 0.5
    kernel = torch.exp(-offsets * offsets / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
    # mirror images of the mass about both ends (the end points themselves are not repeated)
    extended = torch.cat([grid.flip(-1)[:, :-1], grid, grid.flip(-1)[:, 1:]], dim=-1)
    # full linear convolution by FFT (what relplot's np.convolve computes directly, far faster for large M)
    full_length = extended.shape[-1] + num_points - 1
    full = torch.fft.irfft(torch.fft.rfft(extended, n=full_length) * torch.fft.rfft(kernel, n=full_length),
                           n=full_length)
    # keep the outputs centred on the original grid points
    start = (num_points - 1) + num_points // 2
    return full[:, start:start + num_points]


def _interpolate(grid: Tensor, num_eval: int) -> Tensor:
    """Linear interpolation of (channels, M) values at ``j/(M-1)`` onto ``num_eval`` equispaced points of [0, 1]."""
    num_points = grid.shape[-1]
    z = torch.linspace(0, 1, num_eval, dtype=grid.dtype, device=grid.device)
    position = z * (num_points - 1)
    left = position.floor().long().clamp(0, num_points - 2)
    right_weight = position - left.to(position.dtype)
    return grid[:, left] * (1 - right_weight) + grid[:, left + 1] * right_weight


def _check_inputs(confidence: Tensor, correct: Tensor) -> None:
    if confidence.ndim != 1 or confidence.shape != correct.shape:
        raise ValueError(f"expected confidence and correct of equal shape (N,), got {tuple(confidence.shape)} "
                         f"and {tuple(correct.shape)}")
    if confidence.numel() == 0:
        raise ValueError("Smooth ECE needs at least one sample, got none")
    if not confidence.is_floating_point():
        raise ValueError(f"confidence must be a floating tensor, got dtype {confidence.dtype}")
    if confidence.min() < 0 or confidence.max() > 1:
        raise ValueError("confidence must lie in [0, 1] (top-label probabilities)")


def smooth_ece_fixed_bandwidth(confidence: Tensor, correct: Tensor, sigma: float | Tensor,
                               num_grid: int | None = None, num_eval: int | None = None) -> Tensor:
    """smECE_sigma at a fixed bandwidth; differentiable in ``confidence`` (for ``CE + lambda * smECE`` training).

    ``sigma`` is a constant: a tensor is read with ``float()``, so no gradient flows through it. To train at the
    automatic bandwidth, compute ``smooth_ece_bandwidth`` on the detached batch and pass it here (docs/math.md §4).
    ``correct`` is treated as data (detached). ``num_grid`` (kernel grid points) and ``num_eval`` (evaluation points)
    default to relplot's choices for this ``sigma``. Computed in float64, returned in ``confidence``'s dtype.
    """
    _check_inputs(confidence, correct)
    sigma = float(sigma)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    default_grid, default_eval = _grid_sizes(sigma)
    num_grid = default_grid if num_grid is None else int(num_grid)
    num_eval = default_eval if num_eval is None else int(num_eval)
    if num_grid < 3 or num_eval < 2:
        raise ValueError(f"need num_grid >= 3 and num_eval >= 2, got {num_grid} and {num_eval}")

    c = confidence.to(torch.float64)
    residual = correct.detach().to(torch.float64) - c
    values = torch.stack([residual, torch.ones_like(residual)])  # channel 0: residual mass, 1: sample mass
    smoothed = _reflected_gaussian_smooth(_deposit_on_grid(c, values, num_grid), sigma)
    residual_at_z, density_at_z = _interpolate(smoothed, num_eval)
    value = residual_at_z.abs().sum() / (density_at_z + _DENSITY_EPS).sum()
    return value.to(confidence.dtype)


def smooth_ece_bandwidth(confidence: Tensor, correct: Tensor, min_sigma: float = 1e-3, refine_steps: int = 10) -> float:
    """The fixed point ``smECE_sigma = sigma`` by bisection on [0, 1] (relplot's ``search_param``).

    ``smECE_sigma`` falls as ``sigma`` grows; the bracket keeps ``sigma`` at or above the fixed point, and any
    ``sigma < min_sigma`` counts as below it.
    """
    _check_inputs(confidence, correct)
    c, a = confidence.detach(), correct.detach()

    def below_fixed_point(sigma: float) -> bool:
        return sigma < min_sigma or sigma < float(smooth_ece_fixed_bandwidth(c, a, sigma))

    if below_fixed_point(1.0):
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(refine_steps):
        middle = (low + high) / 2
        if below_fixed_point(middle):
            low = middle
        else:
            high = middle
    return high


def smooth_ece(confidence: Tensor, correct: Tensor) -> float:
    """Smooth ECE at the automatic bandwidth (the reference ``relplot.smECE``); not differentiable."""
    sigma = smooth_ece_bandwidth(confidence, correct)
    return float(smooth_ece_fixed_bandwidth(confidence.detach(), correct.detach(), sigma))
