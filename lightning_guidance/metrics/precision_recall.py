"""Improved precision and recall for generative models (Kynkäänniemi et al. 2019, sec. 2, eqs. 1-2).

Each set's manifold is the union of balls around its feature vectors, each ball reaching the point's k-th nearest
neighbour within the set (k = 3 in the paper). Precision = the fraction of generated samples inside the real
manifold; recall = the fraction of real samples inside the generated manifold. A point is inside a ball when its
distance is <= the radius, as in the paper's reference code.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

try:
    import faiss
except ImportError:  # faiss is optional: torch computes the same radii, more slowly for large sets
    faiss = None

KnnBackend = Literal["auto", "faiss", "torch"]

# pairwise distances are computed in blocks of at most this many entries (float64: 128 MiB)
_BLOCK_ELEMENTS = 1 << 24


def _row_blocks(num_rows: int, num_columns: int):
    step = max(1, _BLOCK_ELEMENTS // max(1, num_columns))
    for start in range(0, num_rows, step):
        yield slice(start, min(start + step, num_rows))


def knn_radii(features: Tensor, k: int = 3, backend: KnnBackend = "auto") -> Tensor:
    """Distance from each row to its k-th nearest other row of ``features`` (N, D), in float64.

    ``backend``: 'faiss' (exact IndexFlatL2, float32, on CPU), 'torch' (blocked cdist) or 'auto' (faiss if installed).
    """
    if features.ndim != 2 or features.shape[0] <= k:
        raise ValueError(f"need features (N, D) with N > k = {k} to find k nearest neighbours, "
                         f"got {tuple(features.shape)}")
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"knn backend must be 'auto', 'faiss' or 'torch', got {backend!r}")
    if backend == "faiss" and faiss is None:
        raise ImportError("knn backend 'faiss' needs the faiss package: pip install faiss-cpu (or faiss-gpu-cu12)")
    if backend == "faiss" or (backend == "auto" and faiss is not None):
        points = features.detach().to("cpu", torch.float32).contiguous().numpy()
        index = faiss.IndexFlatL2(points.shape[1])
        index.add(points)
        squared, _ = index.search(points, k + 1)  # the point itself comes first
        return torch.from_numpy(squared[:, k]).to(features.device, torch.float64).clamp_min(0).sqrt()
    points = features.detach().to(torch.float64)
    radii = []
    for rows in _row_blocks(points.shape[0], points.shape[0]):
        distances = torch.cdist(points[rows], points)
        radii.append(distances.topk(k + 1, dim=1, largest=False).values[:, k])  # index 0 is the point itself
    return torch.cat(radii)


def manifold_coverage(queries: Tensor, support: Tensor, radii: Tensor) -> Tensor:
    """Fraction of ``queries`` within ``radii[j]`` of some ``support[j]`` (the union-of-balls manifold), float64."""
    queries, support = queries.detach().to(torch.float64), support.detach().to(torch.float64)
    inside = []
    for rows in _row_blocks(queries.shape[0], support.shape[0]):
        inside.append((torch.cdist(queries[rows], support) <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(inside).to(torch.float64).mean()


def _concatenated(state: list[Tensor] | Tensor) -> Tensor:
    # a list state is a list before a sync and one tensor after it
    if isinstance(state, list) and not state:
        return torch.empty(0, 0)
    return dim_zero_cat(state)


class GenerativePrecisionRecall(Metric):
    """Improved precision/recall over feature vectors: ``update(features (B, D), real: bool)``.

    ``compute()`` returns ``{'precision': tensor, 'recall': tensor}``. All features are kept (cat states, gathered
    across ranks; every rank must update both sets at least once), and compute is O(N_real * N_generated)
    distances.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, k: int = 3, knn_backend: KnnBackend = "auto", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if knn_backend not in ("auto", "faiss", "torch"):
            raise ValueError(f"knn_backend must be 'auto', 'faiss' or 'torch', got {knn_backend!r}")
        self.k = k
        self.knn_backend = knn_backend
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")

    def update(self, features: Tensor, real: bool) -> None:
        if features.ndim != 2:
            raise ValueError(f"expected features (B, D), got {tuple(features.shape)}")
        (self.real_features if real else self.fake_features).append(features.detach())

    def compute(self) -> dict[str, Tensor]:
        real, fake = _concatenated(self.real_features), _concatenated(self.fake_features)
        num_real, num_fake = real.shape[0], fake.shape[0]
        if min(num_real, num_fake) <= self.k:
            raise RuntimeError(f"precision/recall with k={self.k} needs more than {self.k} real and generated "
                               f"samples, got {num_real} real and {num_fake} generated")
        precision = manifold_coverage(fake, real, knn_radii(real, self.k, self.knn_backend))
        recall = manifold_coverage(real, fake, knn_radii(fake, self.k, self.knn_backend))
        return {"precision": precision, "recall": recall}
