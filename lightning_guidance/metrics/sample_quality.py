"""Sample quality of several generated sets (e.g. one per guidance scale) against one real set, as a judge sees it.

Per set: Fréchet distance in the judge's feature space (``fd_<name>``; Heusel et al. 2017, eq. 6), improved
precision/recall on the same features (Kynkäänniemi et al. 2019), conditional accuracy (the judge agrees with the
class a sample was generated for) and the classifier score ``exp E KL(p(y|x) || p(y))`` under the judge; optionally
the standard Inception FID when its weights are on disk. The judge runs once per batch: its features feed both the
Fréchet distance and precision/recall. Every metric is a torchmetrics state that reduces across ranks, so
``compute`` is collective: every rank must call it, in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from torch import Tensor, nn
from torchmetrics import Metric

from . import (
    ClassifierScore,
    FrechetDistance,
    GenerativePrecisionRecall,
    conditional_accuracy,
    inception_fid,
)
from ..io.shards import read_shard_rows
from ..io.tables import write_table
from .judge import Judge


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
    """``update_real(x, labels)``; ``update_generated(group, x, labels)``; ``compute(group)``, ``compute_real()``.

    ``groups``: names of the generated sets. ``fd_name``: the key of the Fréchet distance, named after the judge's
    feature space (``fd_digits``), never "fid". ``inception_weights``: a local Inception weights file for the
    standard FID (FileNotFoundError naming it when absent). Images are float in [-1, 1], NCHW.
    """

    def __init__(self, judge: Judge, groups: Sequence[str], fd_name: str = "fd_judge", precision_recall_k: int = 3,
                 knn_backend: str = "auto", inception_weights: str | None = None):
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
        self.inception = None
        if inception_weights is not None:
            self.inception = nn.ModuleDict({_key(g): inception_fid(inception_weights) for g in groups})

    def _check_group(self, group: str) -> str:
        if group not in self.groups:
            raise KeyError(f"unknown generated set {group!r}; known: {self.groups}")
        return _key(group)

    def update_real(self, x: Tensor, labels: Tensor) -> None:
        logits, features = self.judge.logits_and_features(x)
        for g in self.groups:
            key = _key(g)
            self.frechet[key].update(features, real=True)
            self.precision_recall[key].update(features, real=True)
            if self.inception is not None:
                self.inception[key].update(x, real=True)
        self.real_accuracy.update(logits, labels)
        self.real_score.update(logits)

    def update_generated(self, group: str, x: Tensor, labels: Tensor) -> None:
        key = self._check_group(group)
        logits, features = self.judge.logits_and_features(x)
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
                self.update_generated(group, x.to(device), labels.to(device))

    def compute(self, group: str) -> dict[str, float]:
        """The figures of one generated set (collective under DDP)."""
        key = self._check_group(group)
        pr = self.precision_recall[key].compute()
        out = {self.fd_name: float(self.frechet[key].compute()), "precision": float(pr["precision"]),
               "recall": float(pr["recall"]), "judge_accuracy": float(self.accuracy[key].compute()),
               "judge_score": float(self.score[key].compute())}
        if self.inception is not None:
            out["fid_inception"] = float(self.inception[key].compute())
        return out

    def compute_real(self) -> dict[str, float]:
        """The judge on the real data itself: its accuracy and classifier score (the reference row)."""
        return {"judge_accuracy": float(self.real_accuracy.compute()), "judge_score": float(self.real_score.compute())}

    def num_samples(self, group: str | None = None) -> int:
        """How many samples (over all ranks) a generated set, or the real set (None), holds (collective)."""
        score = self.real_score if group is None else self.score[self._check_group(group)]
        with score.sync_context():
            return int(score.count)

    def reset(self) -> None:
        for module in self.modules():
            if isinstance(module, Metric):
                module.reset()


def write_quality_table(folder: str | Path, judge: Judge, real_data: str, fd_name: str, num_samples: int, target: str,
                        axis: str, rows: Sequence[dict], real: dict[str, float], num_real: int) -> tuple[Path, Path]:
    """``<folder>/metrics_table.{json,md}``: one row per swept value (``{'value', 'guidance', 'num_samples',
    'metrics'}``; ``axis`` names the value in the markdown table) and a reference row, the judge on the real data."""
    name = getattr(judge, "checkpoint", None) or type(judge).__name__
    table = {"judge": name, "judge_num_features": judge.num_features, "real_data": real_data, "fd_name": fd_name,
             "num_samples_per_value": num_samples, "target": target, "rows": list(rows), "real": real,
             "num_real_samples": num_real}
    keys = list(rows[0]["metrics"])
    intro = (f"Samples graded by the judge `{name}` against the real data of {real_data}, {num_samples} samples per "
             f"value. `{fd_name}` is the Fréchet distance in the judge's {judge.num_features} penultimate features "
             "(not Inception FID).")
    cells = [[f"{r['value']:g}", r["guidance"], str(r["num_samples"])] + [f"{r['metrics'][k]:.4f}" for k in keys]
             for r in rows]
    cells.append(["real data", "(the judge on the real data)", str(num_real)]
                 + [f"{real[k]:.4f}" if k in real else "—" for k in keys])
    return write_table(folder, "metrics_table", table, intro, [axis, "guidance", "samples", *keys], cells)
