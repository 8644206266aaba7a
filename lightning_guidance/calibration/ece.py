"""Binned expected calibration error (ECE) of top-label confidences, and its integral over diffusion time.

ECE (Guo et al. 2017, eq. 3; Naeini et al. 2015): with equal-width confidence bins ``B_b``,
``ECE = sum_b |B_b|/n |acc(B_b) - conf(B_b)|``. Integral ECE (EluCD, Ma et al., docs/math.md §3):
``ECE_int = (1/K) sum_k ECE(t_k)``.

The bins follow torchmetrics 1.9 (``MulticlassCalibrationError(norm="l1")``) exactly, so the numbers here and the
upstream metric agree: bin ``b`` holds ``b/n <= c < (b+1)/n``, and a confidence of exactly 1 (a saturated softmax)
falls in an extra bin of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def top_label_confidence(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Top-label confidence ``c_i = max_k p_ik`` and correctness ``a_i = [argmax_k p_ik == y_i]`` (as probs' dtype).

    ``probs``: (N, C) class probabilities; ``labels``: (N,) int class ids.
    """
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"expected probs (N, C) and labels (N,), got {tuple(probs.shape)} and {tuple(labels.shape)}")
    if not probs.is_floating_point():
        raise ValueError(f"probs must be a floating tensor of probabilities, got dtype {probs.dtype}")
    if probs.numel() and (probs.min() < 0 or probs.max() > 1):
        raise ValueError("probs must lie in [0, 1]: pass softmax(logits), not logits")
    confidence, prediction = probs.max(dim=1)
    correct = (prediction == labels).to(probs.dtype)
    return confidence, correct


def calibration_bin_statistics(confidence: Tensor, correct: Tensor, n_bins: int = 10) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin count, sum of confidences and sum of correctness, each float64 of shape (n_bins + 1,).

    Sums (not means) so that they add across batches and ranks; bin ``n_bins`` holds only ``c == 1``. The bin of a
    confidence is decided in its own dtype, as torchmetrics does (it bins in float32).
    """
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    if confidence.shape != correct.shape or confidence.ndim != 1:
        raise ValueError(f"expected confidence and correct of equal shape (N,), got {tuple(confidence.shape)} "
                         f"and {tuple(correct.shape)}")
    confidence = confidence.detach()
    boundaries = torch.linspace(0, 1, n_bins + 1, dtype=confidence.dtype, device=confidence.device)
    index = (torch.bucketize(confidence, boundaries, right=True) - 1).clamp(0, n_bins)
    zeros = torch.zeros(n_bins + 1, dtype=torch.float64, device=confidence.device)
    count = zeros.index_add(0, index, torch.ones_like(confidence, dtype=torch.float64))
    confidence_sum = zeros.index_add(0, index, confidence.to(torch.float64))
    correct_sum = zeros.index_add(0, index, correct.detach().to(torch.float64))
    return count, confidence_sum, correct_sum


def ece_from_bin_statistics(count: Tensor, confidence_sum: Tensor, correct_sum: Tensor) -> Tensor:
    """``sum_b |B_b|/n |acc_b - conf_b| = sum_b |sum_{i in B_b} (a_i - c_i)| / n`` over the last dimension.

    Leading dimensions are kept (e.g. one row per time bucket); a row with no samples gives NaN.
    """
    total = count.sum(dim=-1)
    gap = (correct_sum - confidence_sum).abs().sum(dim=-1)
    return torch.where(total > 0, gap / total.clamp_min(1), torch.full_like(gap, float("nan")))


def expected_calibration_error(confidence: Tensor, correct: Tensor, n_bins: int = 10) -> Tensor:
    """Equal-width-bin ECE of top-label confidences (module docstring); equals torchmetrics' l1 calibration error."""
    if confidence.numel() == 0:
        raise ValueError("expected_calibration_error needs at least one sample, got none")
    return ece_from_bin_statistics(*calibration_bin_statistics(confidence, correct, n_bins))


def integral_ece(eces: Tensor | Sequence[float]) -> Tensor:
    """Integral calibration error ``(1/K) sum_k ECE(t_k)`` over K time steps (EluCD, docs/math.md §3); NaN propagates."""
    eces = torch.as_tensor(eces, dtype=torch.float64) if not isinstance(eces, Tensor) else eces
    if eces.numel() == 0:
        raise ValueError("integral_ece needs the ECE of at least one time step, got none")
    return eces.mean()


def time_buckets(t_range: Sequence[float], num_buckets: int) -> list[tuple[float, float]]:
    """``num_buckets`` equal sub-intervals of ``t_range``."""
    lo, hi = (float(v) for v in t_range)
    if num_buckets < 1 or not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"need num_buckets >= 1 and 0 <= lo < hi <= 1, got {num_buckets} and {t_range}")
    return [(lo + (hi - lo) * k / num_buckets, lo + (hi - lo) * (k + 1) / num_buckets) for k in range(num_buckets)]


def bucket_name(bucket: tuple[float, float] | None) -> str:
    return "clean" if bucket is None else f"t{bucket[0]:.2f}-{bucket[1]:.2f}"
