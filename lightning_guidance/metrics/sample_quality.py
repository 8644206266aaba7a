"""Sample quality of several generated sets (e.g. one per guidance scale) against one real set, as a judge sees it.

Per set: Fréchet distance in the judge's feature space (``fd_<name>``; Heusel et al. 2017, eq. 6), the kernel
distance on the same features (``kd_<name>``, KID's unbiased estimator, with its standard deviation over subsets;
``metrics.kernel_distance``), improved precision/recall on the same features (Kynkäänniemi et al. 2019), conditional
accuracy (the judge agrees with the class a sample was generated for) and the classifier score
``exp E KL(p(y|x) || p(y))`` under the judge (an Inception-Score analogue); optionally the standard Inception FID when
its weights are on disk. The judge runs once per batch; what it saw of each sample (id, label, logits, features) is
kept (``metrics.products.SampleProducts``), for the kernel distance, the real-vs-real floor and the per-sample files
that bootstraps read (``io.sample_products``). Every metric is a torchmetrics state that reduces across ranks, so
``compute`` is collective: every rank must call it, in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from . import (
    ClassifierScore,
    FrechetDistance,
    GenerativePrecisionRecall,
    conditional_accuracy,
    inception_fid,
)
from ..io.sample_products import REAL_GROUP, products_path, write_sample_products
from ..io.shards import read_shard_rows
from ..io.tables import write_table
from .judge import Judge
from .kernel_distance import kd_name, kernel_distance
from .products import SampleProducts, real_floor


class FeatureVectors(nn.Module):
    """The identity on feature vectors that were already computed (by the judge), sized for FrechetDistance."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, features: Tensor) -> Tensor:
        return features


def _key(group: str) -> str:
    return group.replace(".", "_")  # ModuleDict keys may not hold dots (scale 2.5)


class SampleQuality(nn.Module):
    """``update_real(x, labels, ids)``; ``update_generated(group, x, labels, ids)``; ``compute(group)``,
    ``compute_real()``, ``real_floor(n)``, ``products(group)``, ``write_products(folder)``.

    ``groups``: names of the generated sets. ``fd_name``: the key of the Fréchet distance, named after the judge's
    feature space (``fd_digits``), never "fid"; the kernel distance is ``kd_<same>``. ``inception_weights``: a local
    Inception weights file for the standard FID (FileNotFoundError naming it when absent), against the real images or
    against the mean and covariance of ``inception_reference`` (an ``.npz``). Images are float in [-1, 1], NCHW.
    ``ids``: the sample ids (dataset indices for real data); without them the kernel distance's subsets follow the
    order the samples arrived in, which depends on the number of processes.
    """

    def __init__(self, judge: Judge, groups: Sequence[str], fd_name: str = "fd_judge", precision_recall_k: int = 3,
                 knn_backend: str = "auto", inception_weights: str | None = None,
                 inception_reference: str | None = None, kd_subsets: int = 100, kd_subset_size: int = 1000,
                 kd_seed: int = 0):
        super().__init__()
        groups = [str(g) for g in groups]
        if not groups or len({_key(g) for g in groups}) != len(groups):
            raise ValueError(f"need at least one generated set, with distinct names; got {groups}")
        if not hasattr(judge, "logits_and_features"):
            raise TypeError(f"the judge must be a lightning_guidance.metrics.judge.Judge, got {type(judge).__name__}")
        self.judge = judge
        self.groups = groups
        self.fd_name = fd_name
        k = judge.num_classes
        features = FeatureVectors(judge.num_features)
        self.frechet = nn.ModuleDict({_key(g): FrechetDistance(features, name=fd_name) for g in groups})
        self.precision_recall = nn.ModuleDict(
            {_key(g): GenerativePrecisionRecall(k=precision_recall_k, knn_backend=knn_backend) for g in groups})
        self.accuracy = nn.ModuleDict({_key(g): conditional_accuracy(k) for g in groups})
        self.score = nn.ModuleDict({_key(g): ClassifierScore(k) for g in groups})
        self.real_accuracy = conditional_accuracy(k)
        self.real_score = ClassifierScore(k)
        self.products_of = nn.ModuleDict({_key(g): SampleProducts() for g in groups})
        self.real_products = SampleProducts()
        self.kd_name = kd_name(fd_name)
        self.precision_recall_k, self.knn_backend = precision_recall_k, knn_backend
        self.kd_subsets, self.kd_subset_size, self.kd_seed = int(kd_subsets), int(kd_subset_size), int(kd_seed)
        self.inception = None
        if inception_weights is not None:
            self.inception = nn.ModuleDict({_key(g): inception_fid(inception_weights, reference=inception_reference)
                                            for g in groups})
        elif inception_reference is not None:
            raise ValueError("inception_reference holds Inception statistics: give inception_weights too (the "
                             "generated images' features come from that network)")

    def _check_group(self, group: str) -> str:
        if group not in self.groups:
            raise KeyError(f"unknown generated set {group!r}; known: {self.groups}")
        return _key(group)

    def update_real(self, x: Tensor, labels: Tensor, ids: Tensor | None = None) -> None:
        logits, features = self.judge.logits_and_features(x)
        self.real_products.update(labels, logits, features, ids)
        for g in self.groups:
            key = _key(g)
            self.frechet[key].update(features, real=True)
            self.precision_recall[key].update(features, real=True)
            if self.inception is not None and self.inception[key].reference is None:
                self.inception[key].update(x, real=True)
        self.real_accuracy.update(logits, labels)
        self.real_score.update(logits)

    def update_generated(self, group: str, x: Tensor, labels: Tensor, ids: Tensor | None = None) -> None:
        key = self._check_group(group)
        logits, features = self.judge.logits_and_features(x)
        self.products_of[key].update(labels, logits, features, ids)
        self.frechet[key].update(features, real=False)
        self.precision_recall[key].update(features, real=False)
        self.accuracy[key].update(logits, labels)
        self.score[key].update(logits)
        if self.inception is not None:
            self.inception[key].update(x, real=False)

    def update_from_shards(self, group: str, shards: Sequence[tuple[Path, np.ndarray]], ids: range, batch_size: int,
                           device) -> None:
        """Feed the samples with ids in ``ids`` (``shards``: ``[(path, its sample ids)]``) to ``group``, reading only
        the rows that hold them, ``batch_size`` at a time."""
        for path, shard_ids in shards:
            rows = np.nonzero((shard_ids >= ids.start) & (shard_ids < ids.stop))[0]
            for lo in range(0, rows.size, batch_size):
                x, labels = read_shard_rows(path, rows[lo:lo + batch_size])
                batch_ids = torch.as_tensor(shard_ids[rows[lo:lo + batch_size]], dtype=torch.long, device=device)
                self.update_generated(group, x.to(device), labels.to(device), batch_ids)

    def compute(self, group: str) -> dict[str, float]:
        """The figures of one generated set (collective under DDP)."""
        key = self._check_group(group)
        pr = self.precision_recall[key].compute()
        kd, kd_std = kernel_distance(self.real_products.compute()["features"],
                                     self.products_of[key].compute()["features"], self.kd_subsets,
                                     self.kd_subset_size, self.kd_seed)
        out = {self.fd_name: float(self.frechet[key].compute()), self.kd_name: kd, f"{self.kd_name}_std": kd_std,
               "precision": float(pr["precision"]), "recall": float(pr["recall"]),
               "judge_accuracy": float(self.accuracy[key].compute()), "judge_score": float(self.score[key].compute())}
        if self.inception is not None:
            out["fid_inception"] = float(self.inception[key].compute())
        return out

    def compute_real(self) -> dict[str, float]:
        """The judge on the real data itself: its accuracy and classifier score (the reference row)."""
        return {"judge_accuracy": float(self.real_accuracy.compute()), "judge_score": float(self.real_score.compute())}

    def settings(self) -> dict:
        """What ``metrics.products.quality_from_products`` needs to recompute these figures from the products."""
        return {"fd_name": self.fd_name, "k": self.precision_recall_k, "knn_backend": self.knn_backend,
                "kd_subsets": self.kd_subsets, "kd_subset_size": self.kd_subset_size, "kd_seed": self.kd_seed}

    def products(self, group: str | None = None) -> dict:
        """Per-sample ids, labels, logits and features of a generated set (the real set: None), sorted by id
        (collective)."""
        return (self.real_products if group is None else self.products_of[self._check_group(group)]).compute()

    def real_floor(self, num_samples: int, seed: int = 0) -> dict:
        """Every figure between two disjoint halves of the real set of ``min(num_samples, N // 2)`` each
        (``metrics.products.real_floor``; collective)."""
        return real_floor(self.products(), num_samples, seed, **self.settings())

    def write_products(self, folder: str | Path, write: bool = True, meta: dict | None = None) -> list[Path]:
        """``<folder>/sample_products/<group>.npz`` for every generated set and ``real.npz`` (``io.sample_products``);
        collective: every rank gathers, ``write`` says whether this one writes (rank 0)."""
        written = []
        for group in [*self.groups, None]:
            arrays = self.products(group)
            if write:
                name = REAL_GROUP if group is None else group
                info = {**(meta or {}), "group": name, "kind": "real" if group is None else "generated",
                        "judge": getattr(self.judge, "checkpoint", None) or type(self.judge).__name__,
                        "settings": self.settings()}
                written.append(write_sample_products(products_path(folder, name), arrays, info))
        return written

    def num_samples(self, group: str | None = None) -> int:
        """How many samples (over all ranks) a generated set, or the real set (None), holds (collective)."""
        score = self.real_score if group is None else self.score[self._check_group(group)]
        with score.sync_context():
            return int(score.count)

    def reset(self) -> None:
        for module in self.modules():
            if isinstance(module, Metric):
                module.reset()


def _cell(value: float) -> str:
    return f"{value:.4f}" if value == 0 or abs(value) >= 0.01 else f"{value:.2e}"


def write_quality_table(folder: str | Path, judge: Judge, real_data: str, fd_name: str, num_samples: int, target: str,
                        axis: str, rows: Sequence[dict], real: dict[str, float], num_real: int,
                        real_floor: dict | None = None, settings: dict | None = None) -> tuple[Path, Path]:
    """``<folder>/metrics_table.{json,md}``: one row per swept value (``{'value', 'guidance', 'num_samples',
    'metrics'}``; ``axis`` names the value in the markdown table), a reference row (the judge on the real data), the
    real-vs-real floor (``{'num_samples', 'metrics'}``: every figure between two disjoint halves of the real data)
    and the ``settings`` the figures were computed with (what ``metrics.products.quality_from_products`` needs to
    recompute them)."""
    name = getattr(judge, "checkpoint", None) or type(judge).__name__
    table = {"judge": name, "judge_num_features": judge.num_features, "real_data": real_data, "fd_name": fd_name,
             "num_samples_per_value": num_samples, "target": target, "rows": list(rows), "real": real,
             "num_real_samples": num_real}
    if real_floor is not None:
        table["real_floor"] = real_floor
    if settings is not None:
        table["settings"] = settings
    keys = list(rows[0]["metrics"])
    intro = (f"Samples graded by the judge `{name}` against the real data of {real_data}, {num_samples} samples per "
             f"value. `{fd_name}` is the Fréchet distance in the judge's {judge.num_features} penultimate features "
             f"(not Inception FID), `{kd_name(fd_name)}` the kernel distance (KID's unbiased estimator) in the same "
             "features, with its standard deviation over subsets.")
    cells = [[f"{r['value']:g}", r["guidance"], str(r["num_samples"])] + [_cell(r["metrics"][k]) for k in keys]
             for r in rows]
    cells.append(["real data", "(the judge on the real data)", str(num_real)]
                 + [_cell(real[k]) if k in real else "—" for k in keys])
    if real_floor is not None:
        floor = real_floor["metrics"]
        cells.append(["real vs real", "(two disjoint halves of the real data: the floor at this n)",
                      str(real_floor["num_samples"])] + [_cell(floor[k]) if k in floor else "—" for k in keys])
    return write_table(folder, "metrics_table", table, intro, [axis, "guidance", "samples", *keys], cells)
