"""A reported number with its 95 % interval, and the verdict on a claim read from the interval of its effect.

An :class:`Estimate` is what a report prints for a measured figure: the value, the interval, how many samples (per
training seed) and how many training seeds it rests on, and how the interval was made: ``bootstrap`` (percentile
bootstrap over sample ids, one seed), ``seed_t`` (over training seeds, then samples: ``stats.hierarchical_bootstrap``)
or ``exact`` (a closed form: no interval). It round-trips through JSON (``as_json`` / ``from_json``), so a claim can
be graded from a report's numbers alone (:meth:`Estimate.grade`: verdict, effect size and the sample count that would
decide it, by :mod:`.verdict`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..io.tables import fmt
from .bootstrap import Interval
from .verdict import effect_size, samples_needed, verdict

ESTIMATE_METHODS = ("bootstrap", "seed_t", "exact")


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float
    n: int  # samples per training seed (0 when the figure is not a statistic of samples)
    seeds: int = 1  # training seeds
    method: str = "bootstrap"
    se: float = 0.0  # the bootstrap replicates' standard deviation (what effect size and needed n read)
    level: float = 0.95

    def __post_init__(self):
        if self.method not in ESTIMATE_METHODS:
            raise ValueError(f"unknown estimate method {self.method!r}; choose one of {ESTIMATE_METHODS}")
        if not self.lo <= self.value <= self.hi and not any(map(math.isnan, (self.lo, self.value, self.hi))):
            # a percentile interval holds its own estimate except for a strongly skewed statistic: widen, never drop
            object.__setattr__(self, "lo", min(self.lo, self.value))
            object.__setattr__(self, "hi", max(self.hi, self.value))

    @classmethod
    def from_interval(cls, interval: Interval, n: int, seeds: int = 1) -> Estimate:
        method = "seed_t" if interval.method == "seed_t" else "bootstrap"
        return cls(interval.estimate, interval.low, interval.high, int(n), int(seeds), method,
                   interval.standard_error, interval.level)

    @classmethod
    def exact(cls, value: float, n: int = 0) -> Estimate:
        """A closed-form number: no sampling noise, no interval."""
        v = float(value)
        return cls(v, v, v, int(n), 1, "exact", 0.0)

    @classmethod
    def from_json(cls, data: dict) -> Estimate:
        return cls(**{k: data[k] for k in ("value", "lo", "hi", "n", "seeds", "method") if k in data},
                   se=float(data.get("se", 0.0)), level=float(data.get("level", 0.95)))

    def as_json(self) -> dict:
        return asdict(self)

    def interval(self) -> Interval:
        return Interval(self.value, self.lo, self.hi, self.level, self.se, 0, self.method)

    def text(self, digits: int = 4) -> str:
        """``0.123 [0.101, 0.145]`` (a closed form: the value alone)."""
        if self.method == "exact":
            return fmt(self.value, digits)
        return f"{fmt(self.value, digits)} [{fmt(self.lo, digits)}, {fmt(self.hi, digits)}]"

    def grade(self, expected_sign: int) -> dict:
        """The verdict on a claim whose effect this is (the paper predicts its sign ``expected_sign``): ``verdict``
        (agree / disagree / inconclusive, from whether the interval excludes 0 and on which side), ``effect_size``
        (the effect in units of the per-sample noise) and ``samples_needed`` (per seed, for the interval to exclude
        0 with 80 % power at the measured effect and noise; ``None`` for a closed form)."""
        interval, n = self.interval(), max(self.n, 1)
        return {"verdict": verdict(interval, expected_sign),
                "effect_size": None if self.method == "exact" else effect_size(interval, n),
                "samples_needed": None if self.method == "exact" else samples_needed(interval, n)}


def text(data: dict) -> str:
    """An estimate stored as JSON (``as_json``), as a report prints it (:meth:`Estimate.text`)."""
    return Estimate.from_json(data).text()


def difference(a: Estimate, b: Estimate) -> Estimate:
    """``a - b`` for two estimates that share nothing (unpaired, independent errors): normal approximation,
    ``se = sqrt(se_a^2 + se_b^2)``. A paired comparison (same sample ids and seeds) must be bootstrapped on the
    difference itself instead (``metrics.intervals.paired_metric_interval``): it is narrower."""
    from .bootstrap import normal_quantile

    se = math.hypot(a.se, b.se)
    half = normal_quantile((1 + a.level) / 2) * se
    exact = a.method == b.method == "exact"
    value = a.value - b.value
    return Estimate(value, value - half, value + half, min(a.n, b.n), min(a.seeds, b.seeds),
                    "exact" if exact else "bootstrap" if max(a.seeds, b.seeds) == 1 else "seed_t", se, a.level)
