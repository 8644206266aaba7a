"""Improved precision and recall for generative models (Kynkäänniemi et al. 2019, sec. 2, eqs. 1-2).

Each set's manifold is the union of balls around its feature vectors, each ball reaching the point's k-th nearest
neighbour within the set (k = 3 in the paper). Precision = the fraction of generated samples inside the real
manifold; recall = the fraction of real samples inside the generated manifold. A point is inside a ball when its
distance is <= the radius, as in the paper's reference code.

At scale (50k samples x 512 features per set): pairwise distances are computed in row blocks of at most
``block_bytes`` (default 128 MiB of float64 distances; faiss blocks its own searches), so memory grows with
N * block, never N^2. Under DDP nothing is gathered: each rank keeps the features it was given; the ranks' shards
visit every rank one at a time (a broadcast per shard), each rank merges the k nearest neighbours and the ball hits
of its own points against each visiting shard, and only the hit counts are summed across ranks. A rank holds its own
shard plus one visiting shard, and the result equals one process's on all features.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

try:
    import faiss
except ImportError:  # faiss is optional: torch computes the same radii, more slowly for large sets
    faiss = None

KnnBackend = Literal["auto", "faiss", "torch"]

DEFAULT_BLOCK_BYTES = 128 * 2**20  # one block of float64 distances: rows x support columns x 8 bytes


def _row_blocks(num_rows: int, num_columns: int, block_bytes: int = DEFAULT_BLOCK_BYTES):
    step = max(1, block_bytes // (8 * max(1, num_columns)))
    for start in range(0, num_rows, step):
        yield slice(start, min(start + step, num_rows))


def _use_faiss(backend: KnnBackend) -> bool:
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"knn backend must be 'auto', 'faiss' or 'torch', got {backend!r}")
    if backend == "faiss" and faiss is None:
        raise ImportError("knn backend 'faiss' needs the faiss package: pip install faiss-cpu (or faiss-gpu-cu12)")
    return backend == "faiss" or (backend == "auto" and faiss is not None)


def nearest_distances(queries: Tensor, support: Tensor, k: int, backend: KnnBackend = "auto",
                      block_bytes: int = DEFAULT_BLOCK_BYTES) -> Tensor:
    """The ``min(k, len(support))`` smallest distances from each query row to the rows of ``support``, ascending,
    float64 (faiss: exact IndexFlatL2 in float32 on the CPU; torch: blocked float64 ``cdist``)."""
    k = min(k, support.shape[0])
    if queries.shape[0] == 0 or k == 0:
        return torch.empty(queries.shape[0], k, dtype=torch.float64, device=queries.device)
    if _use_faiss(backend):
        index = faiss.IndexFlatL2(support.shape[1])
        index.add(support.detach().to("cpu", torch.float32).contiguous().numpy())
        squared, _ = index.search(queries.detach().to("cpu", torch.float32).contiguous().numpy(), k)
        return torch.from_numpy(squared).to(queries.device, torch.float64).clamp_min(0).sqrt()
    q, s = queries.detach().to(torch.float64), support.detach().to(torch.float64)
    return torch.cat([torch.cdist(q[rows], s).topk(k, dim=1, largest=False).values
                      for rows in _row_blocks(q.shape[0], s.shape[0], block_bytes)])


def knn_radii(features: Tensor, k: int = 3, backend: KnnBackend = "auto",
              block_bytes: int = DEFAULT_BLOCK_BYTES) -> Tensor:
    """Distance from each row to its k-th nearest other row of ``features`` (N, D), in float64.

    ``backend``: 'faiss' (exact IndexFlatL2, float32, on CPU), 'torch' (blocked cdist) or 'auto' (faiss if installed).
    """
    if features.ndim != 2 or features.shape[0] <= k:
        raise ValueError(f"need features (N, D) with N > k = {k} to find k nearest neighbours, "
                         f"got {tuple(features.shape)}")
    _use_faiss(backend)
    return nearest_distances(features, features, k + 1, backend, block_bytes)[:, k]  # the point itself comes first


def ball_hits(queries: Tensor, support: Tensor, radii: Tensor, block_bytes: int = DEFAULT_BLOCK_BYTES) -> Tensor:
    """For each query: is it within ``radii[j]`` of some ``support[j]``? (bool, blocked float64 distances)."""
    queries, support = queries.detach().to(torch.float64), support.detach().to(torch.float64)
    if queries.shape[0] == 0 or support.shape[0] == 0:
        return torch.zeros(queries.shape[0], dtype=torch.bool, device=queries.device)
    radii = radii.to(torch.float64).unsqueeze(0)
    return torch.cat([(torch.cdist(queries[rows], support) <= radii).any(dim=1)
                      for rows in _row_blocks(queries.shape[0], support.shape[0], block_bytes)])


def manifold_coverage(queries: Tensor, support: Tensor, radii: Tensor,
                      block_bytes: int = DEFAULT_BLOCK_BYTES) -> Tensor:
    """Fraction of ``queries`` within ``radii[j]`` of some ``support[j]`` (the union-of-balls manifold), float64."""
    return ball_hits(queries, support, radii, block_bytes).to(torch.float64).mean()


def _concatenated(state: list[Tensor] | Tensor) -> Tensor:
    # a list state is a list before a sync and one tensor after it
    if isinstance(state, list) and not state:
        return torch.empty(0, 0)
    return dim_zero_cat(state)


class _Shards:
    """Each rank's shard of one feature set, visiting every rank in turn (one broadcast per shard)."""

    def __init__(self, group):
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def _src(self, i: int) -> int:
        return dist.get_global_rank(self.group, i) if self.group is not None else i

    def visit(self, own: Tensor, *extras: Tensor):
        """Yield ``(shard, *extras of that shard)`` from every rank in rank order (float64 on own's device)."""
        own = own.to(torch.float64)
        extras = tuple(e.to(torch.float64) for e in extras)
        for i in range(self.world):
            shape = torch.tensor(own.shape if i == self.rank else (0, 0), dtype=torch.long, device=own.device)
            dist.broadcast(shape, self._src(i), group=self.group)
            n, d = int(shape[0]), int(shape[1])
            parts = [own, *extras] if i == self.rank else [
                torch.empty((n, d), dtype=torch.float64, device=own.device),
                *(torch.empty(n, dtype=torch.float64, device=own.device) for _ in extras)]
            if n > 0:
                for part in parts:
                    dist.broadcast(part.contiguous(), self._src(i), group=self.group)
            yield parts

    def sum(self, values: list[float], device) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t.tolist()


class GenerativePrecisionRecall(Metric):
    """Improved precision/recall over feature vectors: ``update(features (B, D), real: bool)``.

    ``compute()`` returns ``{'precision': tensor, 'recall': tensor}``; it is collective under DDP (every rank calls
    it) and gathers no features (module docstring); a rank may hold no features of a set. Compute is
    O(N_real * N_generated) distances in blocks of ``block_bytes``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, k: int = 3, knn_backend: KnnBackend = "auto", block_bytes: int = DEFAULT_BLOCK_BYTES,
                 **kwargs: Any) -> None:
        kwargs.setdefault("sync_on_compute", False)  # compute reduces hit counts itself; features stay where they are
        super().__init__(**kwargs)
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if knn_backend not in ("auto", "faiss", "torch"):
            raise ValueError(f"knn_backend must be 'auto', 'faiss' or 'torch', got {knn_backend!r}")
        if int(block_bytes) < 8:
            raise ValueError(f"block_bytes must be at least one float64 (8), got {block_bytes}")
        self.k = k
        self.knn_backend = knn_backend
        self.block_bytes = int(block_bytes)
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")

    def update(self, features: Tensor, real: bool) -> None:
        if features.ndim != 2:
            raise ValueError(f"expected features (B, D), got {tuple(features.shape)}")
        (self.real_features if real else self.fake_features).append(features.detach())

    def _check_counts(self, num_real: int, num_fake: int) -> None:
        if min(num_real, num_fake) <= self.k:
            raise RuntimeError(f"precision/recall with k={self.k} needs more than {self.k} real and generated "
                               f"samples, got {num_real} real and {num_fake} generated")

    def compute(self) -> dict[str, Tensor]:
        real, fake = _concatenated(self.real_features), _concatenated(self.fake_features)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size(self.process_group) > 1:
            return self._compute_sharded(real, fake)
        self._check_counts(real.shape[0], fake.shape[0])
        precision = manifold_coverage(fake, real, knn_radii(real, self.k, self.knn_backend, self.block_bytes),
                                      self.block_bytes)
        recall = manifold_coverage(real, fake, knn_radii(fake, self.k, self.knn_backend, self.block_bytes),
                                   self.block_bytes)
        return {"precision": precision, "recall": recall}

    def _sharded_radii(self, shards: _Shards, own: Tensor) -> Tensor:
        """k-NN radii of this rank's rows within the whole set: the k + 1 smallest distances merged over shards."""
        best = torch.empty(own.shape[0], 0, dtype=torch.float64, device=own.device)
        for (shard,) in shards.visit(own):
            if shard.shape[0]:
                near = nearest_distances(own, shard, self.k + 1, self.knn_backend, self.block_bytes)
                best = torch.cat([best, near], dim=1).sort(dim=1).values[:, : self.k + 1]
        return best[:, self.k] if best.shape[1] > self.k else best.new_empty(0)

    def _compute_sharded(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        shards = _Shards(self.process_group)
        device = self.device  # where this rank's collectives run (CPU for gloo, its GPU for NCCL)
        real, fake = real.to(device), fake.to(device)
        num_real, num_fake = shards.sum([real.shape[0], fake.shape[0]], device)
        self._check_counts(int(num_real), int(num_fake))
        real_radii, fake_radii = self._sharded_radii(shards, real), self._sharded_radii(shards, fake)
        fake_hit = torch.zeros(fake.shape[0], dtype=torch.bool, device=device)
        for shard, radii in shards.visit(real, real_radii):
            fake_hit |= ball_hits(fake, shard, radii, self.block_bytes)
        real_hit = torch.zeros(real.shape[0], dtype=torch.bool, device=device)
        for shard, radii in shards.visit(fake, fake_radii):
            real_hit |= ball_hits(real, shard, radii, self.block_bytes)
        fake_hits, real_hits = shards.sum([float(fake_hit.sum()), float(real_hit.sum())], device)
        return {"precision": torch.tensor(fake_hits / num_fake, dtype=torch.float64, device=device),
                "recall": torch.tensor(real_hits / num_real, dtype=torch.float64, device=device)}
