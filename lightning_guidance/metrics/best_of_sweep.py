"""Best against best over a sweep, without the optimism of choosing and grading on the same samples.

A method's quality over a scale sweep is that of its best scale; picking the minimum of noisy figures and reporting
it favours the method with more (or noisier) scales. Here the choice is *cross-fitted*: the sample ids of a set are
cut into two halves holding half of each class (:func:`halves`); the best candidate of a method (a scale, or a
(method, scale) pair) is chosen on one half and graded on the other, and the two gradings are averaged. Every
candidate was sampled with the same ids and seeds, so two methods are compared *paired*: each bootstrap resample
draws one set of ids per half (and one of real ids) for both. The bootstrap holds the choices fixed (they were made
on the other half, so they carry no optimism; their own variability is not in the interval).

Intervals are centred on the estimate, ``estimate ± z SE`` with ``SE`` the spread of the bootstrap replicates
(``stats.normal_interval``; several training seeds: ``hierarchical_bootstrap``'s ``seed_t``, also centred). The
percentile interval of a Fréchet distance is not usable here: a resample repeats samples, and a set with fewer
distinct samples is farther from the real one, so the replicates sit above the estimate (at 100 samples in 64
features, by more than their spread). On simulated Gaussian features the percentile interval of a paired difference
covered its mean 23 % of the time at 100 samples in 64 features, that of one set's distance never; the centred one
covered both, conservatively (the replicates' spread overstates the noise a little; tests/test_best_of_sweep.py).

The figure of many resamples at once is ``metrics.intervals``' (batched over resamples, from draw counts).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..stats import Estimate, Interval, bootstrap, hierarchical_bootstrap, normal_interval
from .graded import Graded
from .intervals import _figure, hierarchical_metric_interval, keep_ids


def halves(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint sets of positions, each with half of every class (alternating within each class in order)."""
    labels = np.asarray(labels)
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.nonzero(labels == c)[0]
        rank[where] = np.arange(len(where))
    return np.nonzero(rank % 2 == 0)[0], np.nonzero(rank % 2 == 1)[0]


def rows(products: dict, positions: np.ndarray) -> dict:
    """The per-sample products at ``positions`` (arrays with one row per sample are cut; the rest kept)."""
    n = len(products["labels"])
    return {k: (v[positions] if isinstance(v, np.ndarray) and v.ndim and len(v) == n else v)
            for k, v in products.items()}


@dataclass
class Sweep:
    """One method's candidates on one training seed: ``{key: per-sample products}`` (each with ``features`` and
    ``labels`` over the same sample ids), the real set's products, and the settings of the figure (``fd_name``)."""

    candidates: Mapping[Hashable, dict]
    real: dict
    settings: Mapping = None

    def check(self) -> np.ndarray:
        sets = list(self.candidates.values())
        if not sets:
            raise ValueError("a sweep needs at least one candidate")
        for s in sets[1:]:
            if not np.array_equal(s["ids"], sets[0]["ids"]) or not np.array_equal(s["labels"], sets[0]["labels"]):
                raise ValueError("the candidates of a best-of-sweep comparison must share their sample ids and labels "
                                 "(sampled with the same ids and seeds)")
        return np.asarray(sets[0]["labels"])

    def figure(self):
        settings = dict(self.settings or {"fd_name": "fd_judge"})
        return _figure(settings["fd_name"], settings)


def best_key(sweep: Sweep, positions: np.ndarray) -> Hashable:
    """The candidate with the lowest Fréchet distance on the rows ``positions`` (ties: the first)."""
    of, real = sweep.figure(), np.arange(len(sweep.real["labels"]))[None]
    values = {k: float(of(rows(c, positions), sweep.real, np.arange(len(positions))[None], real)[0])
              for k, c in sweep.candidates.items()}
    return min(values, key=values.get)


@dataclass
class CrossFit:
    """The cross-fitted comparison: its interval, and per seed the keys chosen for each half (``chosen[s] =
    {'a': (key graded on half 0, key graded on half 1), 'b': ...}``)."""

    interval: Interval
    chosen: list[dict]
    num_samples: int


def crossfit(per_seed: Sequence[tuple[Sweep, Sweep | None]], num_resamples: int = 1000, seed: int = 0,
             level: float = 0.95) -> CrossFit:
    """``fd(a at its best) - fd(b at its best)`` (``b`` None: ``fd(a at its best)``), each best chosen on the other
    half of the sample ids, the two halves' values averaged; ``per_seed[s] = (a, b)`` of training seed s (one seed: a
    bootstrap over sample and real ids; several: over seeds, then ids)."""
    stats, sizes, chosen = [], [], []
    for a, b in per_seed:
        labels = a.check()
        if b is not None and (not np.array_equal(b.check(), labels) or not np.array_equal(
                next(iter(b.candidates.values()))["ids"], next(iter(a.candidates.values()))["ids"])):
            raise ValueError("a paired best-of-sweep comparison needs the same sample ids in both methods")
        parts = halves(labels)
        if min(len(h) for h in parts) < 2:
            raise ValueError(f"{len(labels)} samples are too few to choose on one half and grade on the other (each "
                             "half needs two)")
        picks = {name: tuple(best_key(sw, parts[1 - h]) for h in (0, 1))
                 for name, sw in (("a", a), ("b", b)) if sw is not None}
        chosen.append(picks)
        stats.append(_statistic(a, b, parts, picks))
        sizes.append((len(parts[0]), len(parts[1]), len(a.real["labels"])))
    options = {"num_resamples": num_resamples, "seed": seed, "level": level, "vectorized": True}
    if len(stats) == 1:
        interval = bootstrap(stats[0], sizes[0], **options)
    else:
        interval = hierarchical_bootstrap(lambda s, *idx: stats[s](*idx), sizes, **options)
    return CrossFit(normal_interval(interval), chosen, int(sum(len(p) for p in halves(per_seed[0][0].check()))))


def _statistic(a: Sweep, b: Sweep | None, parts, picks):
    """``(i0 (B, n0), i1 (B, n1), ir (B, m)) -> (B,)``: the mean over halves of the paired difference."""
    of = a.figure()
    sets = {(m, h): rows(sw.candidates[picks[m][h]], parts[h]) for m, sw in (("a", a), ("b", b)) if sw is not None
            for h in (0, 1)}

    def value(i0, i1, ir):
        total = 0.0
        for h, ih in enumerate((i0, i1)):
            total = total + of(sets["a", h], a.real, ih, ir)
            if b is not None:
                total = total - of(sets["b", h], a.real, ih, ir)
        return total / 2

    return value


def fd_interval(per_seed: Sequence[tuple[dict, dict | None, dict]], settings: Mapping, num_resamples: int = 1000,
                seed: int = 0, level: float = 0.95) -> Interval:
    """The Fréchet distance of set ``a`` on all its ids, or the paired difference ``a - b`` (same ids): ``per_seed[s]
    = (a, b or None, real)``; ``metrics.intervals.hierarchical_metric_interval``, centred."""
    return normal_interval(hierarchical_metric_interval(per_seed, settings["fd_name"], num_resamples=num_resamples,
                                                        seed=seed, level=level, **settings))


def fd_against(g: Graded, reference: Sequence[dict], num_resamples: int = 1000) -> dict[str, Estimate]:
    """Per scale of the run ``g``, its Fréchet distance minus that of ``reference`` (per training seed, a set sampled
    with the same sample ids and per-sample seeds), paired on the run's ids (:func:`fd_interval`)."""
    out = {}
    for s in g.tables[0]["scales"]:
        sets = [(p, keep_ids(q, p["ids"]), real) for p, q, real in zip(g.products(s), reference, g.real())]
        out[s] = Estimate.from_interval(fd_interval(sets, g.settings, num_resamples), len(sets[0][0]["ids"]),
                                        len(sets))
    return out


def sweeps_of(runs: Sequence[tuple[Hashable, Graded]], keep, ids=None, keyed: bool = False) -> list[Sweep]:
    """Per training seed, the :class:`Sweep` over the scales ``keep`` accepts of graded runs ``(key, Graded)`` (the
    candidates: scales, or ``(run key, scale)`` when ``keyed``), on the sample ids ``ids`` (default: all)."""
    pick = (lambda p: p) if ids is None else (lambda p: keep_ids(p, ids))
    return [Sweep({((key, float(s)) if keyed else float(s)): pick(g.products(s)[k])
                   for key, g in runs for s in g.tables[0]["scales"] if keep(s)},
                  runs[0][1].real()[k], runs[0][1].settings)
            for k in range(min(g.seeds for _, g in runs))]


def best_against_best(a: Sequence[tuple[Hashable, Graded]], b: Graded, keep_a, keep_b, keyed: bool = False,
                      num_resamples: int = 1000) -> dict:
    """``fd(a at its best) - fd(b at its best)`` over the scales ``keep_a`` / ``keep_b`` accept (``a``: one run, or
    several whose best run and scale is chosen, ``keyed``), cross-fitted (:func:`crossfit`) on the sample ids and
    training seeds the runs share: ``{"effect": Estimate json, "chosen": [per seed {"a": (choice graded on half 0, on
    half 1), "b": ...}], "edge": a chosen scale at an end of its grid}``."""
    first = [g for _, g in a] + [b]
    ids = sorted(set.intersection(*(set(g.products(next(iter(g.tables[0]["scales"])))[0]["ids"].tolist())
                                    for g in first)))
    sa, sb = sweeps_of(a, keep_a, ids, keyed), sweeps_of([("b", b)], keep_b, ids)
    seeds = min(len(sa), len(sb))  # a run of fewer seeds has the first ones
    fit = crossfit(list(zip(sa[:seeds], sb[:seeds])), num_resamples=num_resamples)
    grids = {m: sorted(c for c in sw.candidates if not isinstance(c, tuple)) for m, sw in (("a", sa[0]), ("b", sb[0]))}
    edge = any(len(grids[m]) > 1 and s in (grids[m][0], grids[m][-1]) for c in fit.chosen for m, p in c.items()
               for s in p)
    return {"effect": Estimate.from_interval(fit.interval, fit.num_samples, seeds).as_json(),
            "chosen": [{k: [list(x) if isinstance(x, tuple) else x for x in v] for k, v in c.items()}
                       for c in fit.chosen], "edge": edge}
