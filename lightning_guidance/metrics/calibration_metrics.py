"""Calibration metrics that torchmetrics lacks: Smooth ECE, and binned ECE per diffusion-time bucket (integral ECE).

Plain binned ECE is torchmetrics' ``MulticlassCalibrationError(num_classes, n_bins=10, norm='l1')``; the per-bucket
ECE here uses the same bins (``lightning_guidance.calibration.ece``) and so gives the same number on each bucket.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn
from torchmetrics.utilities.data import dim_zero_cat

from ..calibration.ece import (
    calibration_bin_statistics,
    ece_from_bin_statistics,
    integral_ece,
    top_label_confidence,
)
from ..calibration.smooth_ece import smooth_ece


class SmoothECE(Metric):
    """Smooth ECE of top-label confidences at the automatic bandwidth (Blasiok & Nakkiran 2023; = ``relplot.smECE``).

    ``update(probs (B, C), labels (B,))``; ``compute()`` returns a float64 scalar. Keeps every confidence (cat
    states, gathered across ranks; every rank must update at least once).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("confidence", [], dist_reduce_fx="cat")
        self.add_state("correct", [], dist_reduce_fx="cat")

    def update(self, probs: Tensor, labels: Tensor) -> None:
        confidence, correct = top_label_confidence(probs.detach(), labels)
        self.confidence.append(confidence)
        self.correct.append(correct)

    def compute(self) -> Tensor:
        if isinstance(self.confidence, list) and not self.confidence:
            raise RuntimeError("SmoothECE: no samples seen; call update(probs, labels) first")
        confidence, correct = dim_zero_cat(self.confidence), dim_zero_cat(self.correct)
        return torch.tensor(smooth_ece(confidence, correct), dtype=torch.float64, device=confidence.device)


class ECEOverTime(Metric):
    """Binned ECE per diffusion-time bucket and their mean, the integral ECE (EluCD, docs/math.md §3).

    ``update(probs (B, C), labels (B,), t)`` with ``t`` in [0, 1] (a float or a (B,) tensor); bucket ``k`` holds
    ``k/K <= t < (k+1)/K`` (``t = 1`` in the last). ``compute()`` returns ``{'ece_per_bucket': (K,),
    'integral_ece': scalar}``; a bucket that saw no sample is NaN and left out of the mean (with a warning).
    States are per-bucket, per-bin sums, so they add exactly across batches and ranks.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, num_buckets: int = 10, n_bins: int = 10, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_buckets, int) or num_buckets < 1:
            raise ValueError(f"num_buckets must be a positive int, got {num_buckets!r}")
        if not isinstance(n_bins, int) or n_bins < 1:
            raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
        self.num_buckets = num_buckets
        self.n_bins = n_bins
        shape = (num_buckets, n_bins + 1)  # + 1: torchmetrics' bin for confidence exactly 1
        self.add_state("count", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("confidence_sum", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("correct_sum", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")

    @property
    def bucket_centers(self) -> Tensor:
        """Midpoint ``t`` of each bucket, for plotting ECE against time."""
        return (torch.arange(self.num_buckets, dtype=torch.float64) + 0.5) / self.num_buckets

    def update(self, probs: Tensor, labels: Tensor, t: Tensor | float) -> None:
        confidence, correct = top_label_confidence(probs.detach(), labels)
        t = torch.as_tensor(t, dtype=torch.float64, device=probs.device).detach()
        t = t.expand(confidence.shape[0]) if t.ndim == 0 else t
        if t.shape != confidence.shape:
            raise ValueError(f"t must be a scalar or of shape ({confidence.shape[0]},), got {tuple(t.shape)}")
        if t.numel() and (t.min() < 0 or t.max() > 1):
            raise ValueError("t must lie in [0, 1] (continuous diffusion time; convert step indices first)")
        bucket = (t * self.num_buckets).floor().long().clamp(0, self.num_buckets - 1)
        for k in bucket.unique().tolist():
            in_bucket = bucket == k
            count, confidence_sum, correct_sum = calibration_bin_statistics(
                confidence[in_bucket], correct[in_bucket], self.n_bins)
            self.count[k] += count
            self.confidence_sum[k] += confidence_sum
            self.correct_sum[k] += correct_sum

    def compute(self) -> dict[str, Tensor]:
        per_bucket = ece_from_bin_statistics(self.count, self.confidence_sum, self.correct_sum)
        seen = ~per_bucket.isnan()
        if not seen.any():
            raise RuntimeError("ECEOverTime: no samples seen; call update(probs, labels, t) first")
        if not seen.all():
            empty = (~seen).nonzero().flatten().tolist()
            rank_zero_warn(f"ECEOverTime: time buckets {empty} of {self.num_buckets} saw no samples; "
                           "the integral ECE averages the others")
        return {"ece_per_bucket": per_bucket, "integral_ece": integral_ece(per_bucket[seen])}
