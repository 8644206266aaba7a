"""Calibration of a classifier on real data, per diffusion-time bucket: accuracy, binned ECE and Smooth ECE.

A clean classifier is measured on clean images (one bucket). A noisy one is measured on real images noised to the
centre ``t_k`` of each of K buckets of its ``t_range`` — the cheap form of EluCD's integral calibration error,
``ECE_int = (1/K) sum_k ECE(t_k)`` (docs/math.md §3). The noise of sample ``i`` comes from its own generator (seed
``seed * 1_000_003 + i``), so the figures do not depend on batching or on the number of processes.
States are torchmetrics sums / concatenations: ``compute`` is collective under DDP.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..diffusion.noise import PerSampleNoise
from ..calibration.ece import bucket_name
from .calibration_metrics import ECEOverTime, SmoothECE


def noised_views(schedule, x0: Tensor, ids: Tensor, buckets: Sequence[tuple[float, float]],
                 seed: int) -> list[tuple[Tensor, Tensor]]:
    """``[(x_t, t)]``, one per bucket: ``x0`` noised to the training step nearest the bucket centre, with per-sample
    noise (sample ``i`` draws its K noises in bucket order from its own generator)."""
    noise = PerSampleNoise(seed * 1_000_003 + ids.cpu(), device=x0.device)
    top = schedule.num_train_steps - 1
    views = []
    for a, b in buckets:
        index = torch.full((x0.shape[0],), round((a + b) / 2 * top), dtype=torch.long, device=x0.device)
        x_t = schedule.q_sample(x0, index, noise.randn(x0.shape[1:], dtype=x0.dtype))
        views.append((x_t, schedule.model_time(index).to(device=x0.device, dtype=x0.dtype)))
    return views


class ClassifierCalibration(nn.Module):
    """``update(net, schedule, x0, labels, ids)``; ``compute()`` -> ``{'acc', 'ece', 'smooth_ece', ...}``.

    ``buckets=None``: a clean classifier, called with ``t=None``. Otherwise the keys are the means over buckets
    (``ece`` is then the integral ECE) plus ``acc_<bucket>``, ``ece_<bucket>``, ``smooth_ece_<bucket>`` per bucket.
    ``n_bins``: equal-width confidence bins of the binned ECE (10 as in torchmetrics and the EluCD evaluation).
    """

    def __init__(self, buckets: Sequence[tuple[float, float]] | None = None, n_bins: int = 10, seed: int = 0):
        super().__init__()
        self.buckets = None if buckets is None else [tuple(float(v) for v in b) for b in buckets]
        self.num_buckets = 1 if buckets is None else len(self.buckets)
        self.seed = int(seed)
        self.ece = ECEOverTime(num_buckets=self.num_buckets, n_bins=n_bins)
        self.smooth_ece = nn.ModuleList([SmoothECE() for _ in range(self.num_buckets)])

    @property
    def names(self) -> list[str]:
        return [bucket_name(None)] if self.buckets is None else [bucket_name(b) for b in self.buckets]

    @torch.no_grad()
    def update(self, net: nn.Module, schedule, x0: Tensor, labels: Tensor, ids: Tensor) -> None:
        if x0.shape[0] == 0:
            return
        views = [(x0, None)] if self.buckets is None else noised_views(schedule, x0, ids, self.buckets, self.seed)
        for k, (x, t) in enumerate(views):
            probs = net(x, t).float().softmax(dim=1)
            self.ece.update(probs, labels, (k + 0.5) / self.num_buckets)  # bucket k of ECEOverTime = bucket k here
            self.smooth_ece[k].update(probs, labels)

    def bin_statistics(self) -> tuple[Tensor, Tensor, Tensor]:
        """Per-bucket, per-bin (count, confidence sum, correct sum), (K, n_bins + 1) each, summed over ranks."""
        with self.ece.sync_context():
            return self.ece.count.clone(), self.ece.confidence_sum.clone(), self.ece.correct_sum.clone()

    def compute(self) -> dict[str, float]:
        per_bucket = self.ece.compute()["ece_per_bucket"]
        count, _, correct = self.bin_statistics()
        accuracy = correct.sum(dim=1) / count.sum(dim=1).clamp_min(1)
        smooth = torch.stack([m.compute() for m in self.smooth_ece])
        out = {"acc": float(accuracy.mean()), "ece": float(per_bucket.mean()), "smooth_ece": float(smooth.mean())}
        if self.buckets is not None:
            for k, name in enumerate(self.names):
                out.update({f"acc_{name}": float(accuracy[k]), f"ece_{name}": float(per_bucket[k]),
                            f"smooth_ece_{name}": float(smooth[k])})
        return out

    def reset(self) -> None:
        self.ece.reset()
        for m in self.smooth_ece:
            m.reset()
