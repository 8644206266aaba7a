"""Bootstrap intervals of the sample-quality figures, read from the per-sample products of the test stage.

A figure of a generated set against the real set is a function of two index arrays (generated ids, real ids); the
bootstrap (``stats``) resamples both. Two methods sampled with the same ids and seeds are compared *paired*: each
resample draws one set of ids for both, and the interval is that of the difference. With several training seeds,
the hierarchical bootstrap draws seeds, then ids within each (``stats.hierarchical_bootstrap``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..stats import Interval, bootstrap, hierarchical_bootstrap
from .products import quality_from_products


def _figure(metric: str, settings: dict):
    def of(generated: dict, real: dict, gi: np.ndarray, ri: np.ndarray) -> float:
        return quality_from_products(generated, real, gi, ri, metrics=[metric], **settings)[metric]
    return of


def _check_paired(a: dict, b: dict) -> None:
    if len(a["ids"]) != len(b["ids"]) or not np.array_equal(np.asarray(a["ids"]), np.asarray(b["ids"])):
        raise ValueError("a paired comparison needs the same sample ids in both sets (sampled with the same ids and "
                         "seeds); these differ")
    if not np.array_equal(np.asarray(a["labels"]), np.asarray(b["labels"])):
        raise ValueError("a paired comparison needs the same label per sample id in both sets; these differ")


def metric_interval(generated: dict, real: dict, metric: str, *, num_resamples: int = 1000, seed: int = 0,
                    level: float = 0.95, **settings) -> Interval:
    """The interval of one figure (e.g. ``fd_digits``) of a generated set, resampling generated and real ids.
    ``settings``: as ``metrics_table.json``'s ``settings`` (``quality_from_products``'s keywords)."""
    of = _figure(metric, settings)
    return bootstrap(lambda gi, ri: of(generated, real, gi, ri), (len(generated["labels"]), len(real["labels"])),
                     num_resamples=num_resamples, seed=seed, level=level)


def paired_metric_interval(generated_a: dict, generated_b: dict, real: dict, metric: str, *,
                           num_resamples: int = 1000, seed: int = 0, level: float = 0.95, **settings) -> Interval:
    """The interval of ``metric(a) - metric(b)`` for two sets with the same sample ids: one resample of ids serves
    both (and one of real ids)."""
    _check_paired(generated_a, generated_b)
    of = _figure(metric, settings)
    return bootstrap(lambda gi, ri: of(generated_a, real, gi, ri) - of(generated_b, real, gi, ri),
                     (len(generated_a["labels"]), len(real["labels"])), num_resamples=num_resamples, seed=seed,
                     level=level)


def hierarchical_metric_interval(per_seed: Sequence[tuple[dict, dict | None, dict]], metric: str, *,
                                 num_resamples: int = 1000, seed: int = 0, level: float = 0.95,
                                 method: str = "seed_t", **settings) -> Interval:
    """Over training seeds, then samples: ``per_seed[s] = (generated_a, generated_b or None, real)`` of the models of
    seed s; the figure of ``a``, or the paired difference ``a - b``, averaged over seeds (``stats``' hierarchical
    bootstrap; ``method`` as there)."""
    of = _figure(metric, settings)
    for a, b, _ in per_seed:
        if b is not None:
            _check_paired(a, b)

    def value(s: int, gi: np.ndarray, ri: np.ndarray) -> float:
        a, b, real = per_seed[s]
        return of(a, real, gi, ri) - (of(b, real, gi, ri) if b is not None else 0.0)

    sizes = [(len(a["labels"]), len(real["labels"])) for a, _, real in per_seed]
    return hierarchical_bootstrap(value, sizes, num_resamples=num_resamples, seed=seed, level=level, method=method)
