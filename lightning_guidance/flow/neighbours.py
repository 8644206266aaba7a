"""Top-k nearest real neighbours of generated samples with faiss (Johnson, Douze & Jégou 2019), in squared L2.

Exact search (``IndexFlatL2``) by default; ``kind="ivf"`` is an inverted-file index (``IndexIVFFlat``, ``nlist``
k-means cells, ``nprobe`` of them visited per query): approximate, faster on large real sets. A GPU index is used
when faiss-gpu sees a GPU and CUDA is available (``device="auto"``). ``same_class``: one index per class, a sample's
neighbours are real samples of its own label only. Inputs are flat float32 feature rows (pixels or any embedding:
the caller maps samples to features).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

INDEX_KINDS = ("flat", "ivf")
INDEX_DEVICES = ("auto", "cpu", "gpu")


@dataclass(frozen=True)
class IndexSettings:
    kind: str = "flat"
    nlist: int = 100
    nprobe: int = 10
    device: str = "auto"

    def __post_init__(self):
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {self.kind!r}; choose one of {', '.join(INDEX_KINDS)}")
        if self.device not in INDEX_DEVICES:
            raise ValueError(f"unknown index device {self.device!r}; choose one of {', '.join(INDEX_DEVICES)}")
        if self.nlist < 1 or not 1 <= self.nprobe:
            raise ValueError(f"IVF needs nlist >= 1 and nprobe >= 1, got nlist={self.nlist}, nprobe={self.nprobe}")

    def describe(self) -> dict:
        """What changes the result (the device does not, so it is left out of cache keys)."""
        out = asdict(self)
        out.pop("device")
        if self.kind == "flat":
            out.pop("nlist"), out.pop("nprobe")
        return out


def gpu_available() -> bool:
    import faiss
    import torch

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0 and torch.cuda.is_available()


def build_index(real: np.ndarray, settings: IndexSettings):
    """A faiss index holding ``real`` (M, D) float32."""
    import faiss

    real = np.ascontiguousarray(real, dtype=np.float32)
    d = real.shape[1]
    if settings.kind == "flat":
        index = faiss.IndexFlatL2(d)
    else:
        if settings.nlist > len(real):
            raise ValueError(f"IVF nlist={settings.nlist} exceeds the {len(real)} real samples it clusters; "
                             "lower nlist (about sqrt of the real set size is usual)")
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, settings.nlist)
        index.train(real)
        index.nprobe = min(settings.nprobe, settings.nlist)
    use_gpu = settings.device == "gpu" or (settings.device == "auto" and gpu_available())
    if use_gpu:
        if not gpu_available():
            raise ValueError("index device 'gpu' asked for, but faiss sees no GPU (install faiss-gpu-cu12 in place "
                             "of faiss-cpu, on a machine with CUDA) or use device: auto")
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(real)
    return index


def _search(real: np.ndarray, queries: np.ndarray, k: int, settings: IndexSettings) -> tuple[np.ndarray, np.ndarray]:
    distances, indices = build_index(real, settings).search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return distances, indices.astype(np.int64)


def top_k_neighbours(queries: np.ndarray, real: np.ndarray, k: int, settings: IndexSettings = IndexSettings(),
                     query_labels: np.ndarray | None = None, real_labels: np.ndarray | None = None,
                     same_class: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(distances (N, k) squared L2, indices (N, k) into real)``, nearest first.

    With ``same_class`` the neighbours of a query of label c are searched among the real samples of label c only.
    """
    queries, real = np.asarray(queries), np.asarray(real)
    if queries.ndim != 2 or real.ndim != 2:
        raise ValueError(f"features must be 2-D (rows, dims): queries {queries.shape}, real {real.shape}")
    if queries.shape[1] != real.shape[1]:
        raise ValueError(f"generated features have {queries.shape[1]} dims but the real ones {real.shape[1]}: "
                         "search both in the same space, at the same resolution")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not same_class:
        if k > len(real):
            raise ValueError(f"k={k} neighbours asked for but the real set has only {len(real)} samples; lower k")
        return _search(real, queries, k, settings)
    if query_labels is None or real_labels is None:
        raise ValueError("same_class search needs the labels of the generated and of the real samples")
    query_labels, real_labels = np.asarray(query_labels), np.asarray(real_labels)
    distances = np.zeros((len(queries), k), np.float32)
    indices = np.zeros((len(queries), k), np.int64)
    for c in np.unique(query_labels):
        members = np.nonzero(real_labels == c)[0]
        if len(members) == 0:
            raise ValueError(f"class {int(c)} has generated samples but no real samples: same_class search cannot "
                             "pair them; check the labels of the shards against the real data, or same_class: false")
        if k > len(members):
            raise ValueError(f"k={k} neighbours asked for but class {int(c)} has only {len(members)} real samples "
                             "(same_class search); lower k")
        rows = np.nonzero(query_labels == c)[0]
        d, i = _search(real[members], queries[rows], k, settings)
        distances[rows], indices[rows] = d, members[i]
    return distances, indices


def recall_at_k(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |approximate top-k ∩ exact top-k| / k (the usual ANN recall@k)."""
    k = exact.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(e.tolist())) / k for a, e in zip(approximate, exact)]))
