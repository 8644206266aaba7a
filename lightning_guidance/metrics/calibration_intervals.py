"""A guide's calibration figures recomputed from its per-image logits, on any resample of the images and at any
temperature, with bootstrap intervals (over images, and over training seeds then images).

``guide_logits.npz`` (written by the guide-calibration test step) holds, for each held-out image, its id, label and
the guide's logits in each of K time buckets (``(N, K, C)``). From them: top-label accuracy and the binned ECE per
bucket (equal-width bins as :mod:`..calibration.ece`, a confidence of exactly 1 in a bin of its own), and their means
over the buckets, the integral ECE ``(1/K) sum_k ECE(t_k)`` (EluCD, Ma et al.; docs/math.md §3). Dividing the logits
by ``T`` gives the figures of the same classifier with temperature ``T`` (``TrainedClassifier(temperature=T)``).
A resample is a vector of counts per image (how often it is drawn), so B resamples cost one (B, N) @ (N, bins)
product per bucket. Two guides read on the same images (same ids, same per-image noise) are compared *paired*.
Intervals are centred on the estimate (``stats.normal_interval``): a binned ECE, like a Fréchet distance, is
larger on a resample that repeats images, so the percentile interval sits above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..stats import Interval, bootstrap, hierarchical_bootstrap, normal_interval

FIGURES = ("ece", "acc")


def read_guide_logits(path: str | Path) -> dict[str, np.ndarray]:
    """``{'ids', 'labels', 'logits' (N, K, C)}`` of a guide-calibration step; one line naming the file if missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"guide logits not found: {path} (the guide-calibration test step writes them)")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in ("ids", "labels", "logits")}


def _residuals(products: dict, temperature: float, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image and bucket: the confidence bin (N, K), ``correct - confidence`` (N, K) and ``correct`` (N, K), with
    the softmax and the binning in float32 as the step computes them."""
    logits = torch.as_tensor(products["logits"], dtype=torch.float32)
    probs = (logits if temperature == 1.0 else logits / temperature).softmax(dim=-1)
    confidence, prediction = probs.max(dim=-1)
    correct = (prediction == torch.as_tensor(products["labels"])[:, None]).to(torch.float32)
    boundaries = torch.linspace(0, 1, n_bins + 1, dtype=confidence.dtype)
    index = (torch.bucketize(confidence, boundaries, right=True) - 1).clamp(0, n_bins)
    correct64 = correct.double().numpy()
    return index.numpy(), correct64 - confidence.double().numpy(), correct64


def _figure_of_counts(products: dict, figure: str, temperature: float, n_bins: int):
    """``counts (B, N) -> (B,)``: the figure on each resample given as per-image draw counts."""
    if figure not in FIGURES:
        raise ValueError(f"unknown calibration figure {figure!r}; choose one of {FIGURES}")
    index, residual, correct = _residuals(products, temperature, n_bins)
    n, k = residual.shape
    if figure == "acc":
        return lambda counts: (counts @ correct).mean(axis=1) / counts.sum(axis=1)
    per_bucket = []
    for b in range(k):  # (N, bins): each image's residual in its bin
        signed = np.zeros((n, n_bins + 1))
        signed[np.arange(n), index[:, b]] = residual[:, b]
        per_bucket.append(signed)
    return lambda counts: np.mean([np.abs(counts @ s).sum(axis=1) for s in per_bucket], axis=0) / counts.sum(axis=1)


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    idx = np.atleast_2d(idx)
    counts = np.zeros((len(idx), n))
    np.add.at(counts, (np.repeat(np.arange(len(idx)), idx.shape[1]), idx.ravel()), 1.0)
    return counts


def integral_ece_of_logits(products: dict, temperature: float = 1.0, n_bins: int = 10,
                           figure: str = "ece") -> float:
    """The integral ECE (or ``figure='acc'``: the mean accuracy over buckets) on all images."""
    n = len(products["labels"])
    return float(_figure_of_counts(products, figure, temperature, n_bins)(np.ones((1, n)))[0])


def _check_paired(a: dict, b: dict) -> None:
    if not np.array_equal(a["ids"], b["ids"]) or not np.array_equal(a["labels"], b["labels"]):
        raise ValueError("a paired calibration comparison needs the same held-out images (ids and labels) in both")


def calibration_interval(per_seed: Sequence[tuple[dict, dict | None]], figure: str = "ece",
                         temperatures: tuple[float, float] = (1.0, 1.0), n_bins: int = 10, num_resamples: int = 1000,
                         seed: int = 0, level: float = 0.95) -> Interval:
    """The interval of ``figure`` of guide ``a`` or of the paired difference ``a - b`` (same images): ``per_seed[s] =
    (a, b or None)`` for the guides of training seed s; one seed: a bootstrap over images, several: over seeds then
    images (``stats.hierarchical_bootstrap``'s ``seed_t``). ``temperatures``: of a and of b."""
    def difference(a: dict, b: dict | None):
        fa = _figure_of_counts(a, figure, temperatures[0], n_bins)
        if b is None:
            return lambda idx: fa(_counts(idx, len(a["labels"])))
        _check_paired(a, b)
        fb = _figure_of_counts(b, figure, temperatures[1], n_bins)
        return lambda idx: (lambda counts: fa(counts) - fb(counts))(_counts(idx, len(a["labels"])))

    stats = [difference(a, b) for a, b in per_seed]
    sizes = [len(a["labels"]) for a, _ in per_seed]
    options = {"num_resamples": num_resamples, "seed": seed, "level": level, "vectorized": True}
    if len(stats) == 1:
        return normal_interval(bootstrap(stats[0], sizes[0], **options))
    return hierarchical_bootstrap(lambda s, idx: stats[s](idx), sizes, **options)
