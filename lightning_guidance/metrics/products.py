"""Per-sample judge outputs, and every sample-quality figure recomputed from them on any set of sample ids.

``SampleProducts`` keeps, for one graded set, each sample's id, label, judge logits and judge features (torchmetrics
"cat" states: gathered across ranks, then sorted by id, so the result does not depend on the number of processes).
:func:`quality_from_products` recomputes from such arrays what ``SampleQuality.compute`` reports (the Fréchet and
kernel distances, precision/recall, judge accuracy and score) for given index arrays, which may repeat ids (a
bootstrap resample): the distances and means count a repeated sample as often as it is drawn; the precision/recall
manifolds are the union of the balls of the *distinct* samples drawn (a repeat adds no ball and, kept, would shrink
the k-NN radii of its copies to 0). On all ids it reproduces the test stage's table. :func:`real_floor` gives each
figure between two disjoint halves of the real set: the value a perfect sampler would get at that n.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from .frechet import frechet_distance
from .kernel_distance import kd_name, kernel_distance
from .precision_recall import ball_hits, knn_radii

STATES = ("ids", "labels", "logits", "features")


class SampleProducts(Metric):
    """``update(labels, logits, features, ids=None)``; ``compute()`` -> numpy ``{'ids', 'labels', 'logits',
    'features'}`` sorted by id (collective under DDP). Without ids (-1) the rows keep their arrival order."""

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in STATES:
            self.add_state(name, [], dist_reduce_fx="cat")

    def update(self, labels: Tensor, logits: Tensor, features: Tensor, ids: Tensor | None = None) -> None:
        n = len(labels)
        if logits.shape[0] != n or features.shape[0] != n or (ids is not None and len(ids) != n):
            raise ValueError(f"sample products: {n} labels but {logits.shape[0]} logits, {features.shape[0]} feature "
                             f"rows and {None if ids is None else len(ids)} ids")
        ids = torch.full((n,), -1, dtype=torch.long) if ids is None else torch.as_tensor(ids, dtype=torch.long)
        self.ids.append(ids.to(labels.device))
        self.labels.append(labels.detach().long())
        self.logits.append(logits.detach().float())
        self.features.append(features.detach().float().flatten(1))

    def compute(self) -> dict[str, np.ndarray]:
        if isinstance(self.labels, list) and not self.labels:
            raise RuntimeError("sample products: no samples seen")
        out = {name: dim_zero_cat(getattr(self, name)).cpu().numpy() for name in STATES}
        if (out["ids"] >= 0).all():
            if len(np.unique(out["ids"])) != len(out["ids"]):
                raise RuntimeError("sample products: a sample id was graded twice")
            order = np.argsort(out["ids"], kind="stable")
            out = {k: v[order] for k, v in out.items()}
        return out


def _as_tensor(a, dtype=None) -> Tensor:
    return torch.as_tensor(np.asarray(a), dtype=dtype)


def _moments(features: Tensor) -> tuple[Tensor, Tensor]:
    mu = features.mean(dim=0)
    centred = features - mu
    return mu, centred.T @ centred / (len(features) - 1)


def _coverage(queries: Tensor, support: Tensor, k: int, backend: str) -> float:
    """Share of the query multiset inside the union of the k-NN balls of the distinct support points."""
    radii = knn_radii(support, k, backend)
    return float(ball_hits(queries, support, radii).to(torch.float64).mean())


def classifier_score(logits: Tensor) -> float:
    """``exp(E KL(p(y|x) || p(y)))`` (Salimans et al. 2016), as ``ClassifierScore`` computes it."""
    log_probs = torch.log_softmax(logits.double(), dim=1)
    probs = log_probs.exp()
    marginal = probs.mean(dim=0)
    mean_kl = -torch.special.xlogy(marginal, marginal).sum() + (probs * log_probs).sum() / len(logits)
    return float(mean_kl.clamp_min(0).exp())


def quality_from_products(generated: dict, real: dict, generated_idx: Sequence[int] | None = None,
                          real_idx: Sequence[int] | None = None, *, fd_name: str = "fd_judge", k: int = 3,
                          knn_backend: str = "auto", kd_subsets: int = 100, kd_subset_size: int = 1000,
                          kd_seed: int = 0, metrics: Sequence[str] | None = None) -> dict[str, float]:
    """The table's figures of ``generated`` against ``real`` (each a dict with ``features``, ``logits``, ``labels``,
    e.g. from ``io.read_sample_products``) on the rows ``generated_idx`` / ``real_idx`` (default: all).

    Keys: ``fd_name``, ``kd_<space>`` and ``kd_<space>_std``, ``precision``, ``recall``, ``judge_accuracy``,
    ``judge_score``; ``metrics`` names the ones wanted (the others are not computed). Settings as the test stage's
    (``metrics_table.json`` records them under ``settings``).
    """
    kd = kd_name(fd_name)
    keys = [fd_name, kd, f"{kd}_std", "precision", "recall", "judge_accuracy", "judge_score"]
    wanted = keys if metrics is None else list(metrics)
    unknown = sorted(set(wanted) - set(keys))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {keys}")
    gi = np.arange(len(generated["labels"])) if generated_idx is None else np.asarray(generated_idx, dtype=np.int64)
    ri = np.arange(len(real["labels"])) if real_idx is None else np.asarray(real_idx, dtype=np.int64)
    g_feat = _as_tensor(generated["features"], torch.float64)
    r_feat = _as_tensor(real["features"], torch.float64)
    out: dict[str, float] = {}
    if fd_name in wanted:
        out[fd_name] = float(frechet_distance(*_moments(r_feat[ri]), *_moments(g_feat[gi])))
    if kd in wanted or f"{kd}_std" in wanted:
        out[kd], out[f"{kd}_std"] = kernel_distance(r_feat[ri], g_feat[gi], kd_subsets, kd_subset_size, kd_seed)
    if "precision" in wanted:
        out["precision"] = _coverage(g_feat[gi], r_feat[np.unique(ri)], k, knn_backend)
    if "recall" in wanted:
        out["recall"] = _coverage(r_feat[ri], g_feat[np.unique(gi)], k, knn_backend)
    logits = _as_tensor(generated["logits"], torch.float32)[gi]
    if "judge_accuracy" in wanted:
        labels = _as_tensor(generated["labels"], torch.long)[gi]
        out["judge_accuracy"] = float((logits.argmax(dim=1) == labels).double().mean())
    if "judge_score" in wanted:
        out["judge_score"] = classifier_score(logits)
    return {key: out[key] for key in keys if key in wanted}


def real_floor(real: dict, num_samples: int, seed: int = 0, **options) -> dict:
    """Each figure between two disjoint random halves of the real set of ``m = min(num_samples, N // 2)`` samples
    each, one graded as if generated: ``{'num_samples': m, 'metrics': {...}}`` (``options`` as
    :func:`quality_from_products`)."""
    n = len(real["labels"])
    m = min(int(num_samples), n // 2)
    if m < 2:
        raise ValueError(f"a real-vs-real floor needs at least 4 real samples, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    return {"num_samples": m, "metrics": quality_from_products(real, real, order[:m], order[m:2 * m], **options)}
