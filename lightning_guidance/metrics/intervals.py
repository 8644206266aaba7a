"""Bootstrap intervals of the sample-quality figures, read from the per-sample products of the test stage.

A figure of a generated set against the real set is a function of two index arrays (generated ids, real ids); the
bootstrap (``stats``) resamples both. Two methods sampled with the same ids and seeds are compared *paired*: each
resample draws one set of ids for both, and the interval is that of the difference. With several training seeds,
the hierarchical bootstrap draws seeds, then ids within each (``stats.hierarchical_bootstrap``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ..stats import Interval, bootstrap, hierarchical_bootstrap
from .kernel_distance import kd_name
from .products import quality_from_products


def _kernel_distance_of(generated: dict, real: dict):
    """The unbiased ``MMD^2`` of all the given ids at once, from kernel matrices computed once per pair of sets (the
    kernel distance's cubic polynomial kernel): the resampled statistic of ``kd_<space>``. On all ids it estimates
    what the test stage's subset mean estimates, with less noise."""
    g, r = (np.asarray(x["features"], dtype=np.float64) for x in (generated, real))
    d = g.shape[1]
    kgg, krr, kgr = ((a @ b.T / d + 1.0) ** 3 for a, b in ((g, g), (r, r), (g, r)))

    def within(k: np.ndarray, idx: np.ndarray) -> float:
        m = len(idx)
        return float((k[np.ix_(idx, idx)].sum() - k[idx, idx].sum()) / (m * (m - 1)))

    return lambda gi, ri: within(kgg, gi) + within(krr, ri) - 2.0 * float(kgr[np.ix_(gi, ri)].mean())


def _figure(metric: str, settings: dict):
    if metric == kd_name(settings.get("fd_name", "fd_judge")):
        kernels: dict = {}

        def kd(generated: dict, real: dict, gi: np.ndarray, ri: np.ndarray) -> float:
            key = (id(generated), id(real))
            if key not in kernels:
                kernels[key] = _kernel_distance_of(generated, real)
            return kernels[key](gi, ri)
        return kd

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


def contrast_interval(per_seed: Sequence[tuple[Mapping[str, dict], dict]], metric: str,
                      combine: Callable[[dict[str, float]], float], *, num_resamples: int = 1000, seed: int = 0,
                      level: float = 0.95, method: str = "seed_t", **settings) -> Interval:
    """Over training seeds, then sample ids: ``per_seed[s] = ({name: generated set}, real)`` with the sets of a seed
    sampled with the same ids; the statistic is ``combine({name: the figure of that set on the drawn ids})``, every set
    seeing the same drawn ids (paired). ``combine`` may be a difference (``v['a'] - v['b']``) or, e.g., the smaller of
    two differences (both must exceed 0 for its interval to). One seed: the bootstrap over samples."""
    of = _figure(metric, settings)
    for sets, _ in per_seed:
        first = next(iter(sets.values()))
        for other in sets.values():
            _check_paired(first, other)

    def value(s: int, gi: np.ndarray, ri: np.ndarray) -> float:
        sets, real = per_seed[s]
        return float(combine({name: of(g, real, gi, ri) for name, g in sets.items()}))

    sizes = [(len(next(iter(sets.values()))["labels"]), len(real["labels"])) for sets, real in per_seed]
    return hierarchical_bootstrap(value, sizes, num_resamples=num_resamples, seed=seed, level=level, method=method)


def keep_ids(products: dict, ids: Sequence[int]) -> dict:
    """The rows of a set of per-sample products whose sample id is in ``ids`` (in id order): to compare two sets on
    the ids they share, or on one half of them."""
    mask = np.isin(np.asarray(products["ids"]), np.asarray(ids))
    return {k: (v[mask] if isinstance(v, np.ndarray) and v.ndim and len(v) == len(mask) else v)
            for k, v in products.items()}
