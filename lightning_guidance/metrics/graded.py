"""A graded sampling run, read back for a report: per training seed, the ``metrics_table.json`` and the per-sample
products the ``test`` stage wrote (one folder per seed), and from them every figure's estimate with its 95 %
interval (over sample ids, and over training seeds then ids where there are several: ``stats.Estimate``), and paired
contrasts of several runs or scales (same seeds, same sample ids: :func:`contrast`). The real set is held fixed: every
run is graded against the same one, so an interval says how far another draw of samples from the same models (and,
with several seeds, other trainings) would move the figure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.sample_products import REAL_GROUP, products_path, read_sample_products
from ..io.tables import fmt, md_table
from ..stats import Estimate, normal_interval
from .intervals import contrast_interval, hierarchical_metric_interval, keep_ids

#: bootstrap resamples of a table figure (precision and recall, which redo a k-NN search per resample: a quarter as
#: many; their interval comes from the replicates' spread), and of a paired contrast
RESAMPLES, CONTRAST_RESAMPLES = 200, 1000
FIGURES = ("fd_digits", "kd_digits", "precision", "recall", "judge_accuracy", "judge_score")


def read_table(path: str | Path, fd_key: str = "fd_digits") -> dict:
    """``{"scales": {"2": {metric: value}}, "real": {...}, "real_floor": {"num_samples", "metrics"}, "fd_name": ...}``
    from a test step's metrics_table.json (the judge's on the real data; the floor: real vs real at this n)."""
    table = json.loads(Path(path).read_text())
    fd = table["fd_name"]

    def named(m: dict) -> dict:
        return {(fd_key if k == fd else k): float(v) for k, v in m.items()}

    out = {"fd_name": fd, "num_samples": table["num_samples_per_value"], "scales": {}}
    for row in table["rows"]:
        out["scales"][f"{row['value']:g}"] = named(row["metrics"])
    out["real"] = named(table["real"])
    if "real_floor" in table:
        out["real_floor"] = {"num_samples": table["real_floor"]["num_samples"],
                             "metrics": named(table["real_floor"]["metrics"])}
    return out


@dataclass
class Graded:
    """A run's grading, one folder per training seed: its point tables, and its per-sample products on demand."""
    folders: list[Path]  # the test steps' output folders, in training-seed order
    tables: list[dict]  # their metrics_table.json, as read by read_table
    settings: dict
    target: str  # the sweep's target: a scale's products are the group ``<target>_<scale>``
    _cache: dict = field(default_factory=dict)

    @property
    def seeds(self) -> int:
        return len(self.folders)

    def products(self, scale: str) -> list[dict]:
        """Per seed, the per-sample products of the set sampled at ``scale`` (a label such as ``"2"``)."""
        if scale not in self._cache:
            group = f"{self.target}_{float(scale):g}"
            self._cache[scale] = [read_sample_products(products_path(f, group)) for f in self.folders]
        return self._cache[scale]

    @classmethod
    def read(cls, tables: list[str | Path]) -> Graded:
        """From the ``metrics_table.json`` of each training seed (the per-sample products are beside each)."""
        raw = json.loads(Path(tables[0]).read_text())
        return cls([Path(t).parent for t in tables], [read_table(t) for t in tables],
                   raw.get("settings", {"fd_name": raw["fd_name"]}), raw.get("target", "cfg"))

    def real(self) -> list[dict]:
        if REAL_GROUP not in self._cache:
            self._cache[REAL_GROUP] = [read_sample_products(products_path(f, REAL_GROUP)) for f in self.folders]
        return self._cache[REAL_GROUP]


def estimate(g: Graded, scale: str, metric: str, ids=None, resamples: int | None = None) -> Estimate:
    """A figure of the run at one scale with its 95 % interval: over training seeds then sample ids when there are
    several (``seed_t``); with one seed the normal bootstrap interval, value ± 1.96 SE (``stats.normal_interval``):
    resampling with duplicates shifts set-level figures (fd, the judge score, coverage), so their percentile interval
    can miss the value itself. ``ids``: only these sample ids."""
    sets = [(s if ids is None else keep_ids(s, ids), None, real) for s, real in zip(g.products(scale), g.real())]
    resamples = resamples or (RESAMPLES // 4 if metric in ("precision", "recall") else RESAMPLES)
    interval = hierarchical_metric_interval(sets, metric, num_resamples=resamples, resample_real=False, **g.settings)
    return Estimate.from_interval(normal_interval(interval), len(sets[0][0]["labels"]), g.seeds)


def contrast(sets: dict[str, tuple[Graded, str]], metric: str, combine, ids=None,
             resamples: int = CONTRAST_RESAMPLES) -> Estimate | dict[str, Estimate]:
    """``combine({name: metric of that run at that scale})`` with its interval, paired: every set on the same
    training seeds and on the sample ids they share (or ``ids``), each resample drawing one set of ids for all; the
    interval is centred as :func:`estimate`'s (``stats.normal_interval``: the repeats' shift of a Fréchet or kernel
    distance differs between two sets, so the percentile interval of their difference is off-centre too).
    ``combine``: elementwise on arrays of resamples (``np.minimum``, not ``min``); a mapping of them gives an
    estimate each, from the same draws."""
    graded_sets = list(sets.values())
    seeds = min(g.seeds for g, _ in graded_sets)
    per_seed = []
    for k in range(seeds):
        got = {name: g.products(scale)[k] for name, (g, scale) in sets.items()}
        shared = set.intersection(*(set(p["ids"].tolist()) for p in got.values()))
        if ids is not None:
            shared &= set(np.asarray(ids).tolist())
        keep = sorted(shared)
        per_seed.append(({name: keep_ids(p, keep) for name, p in got.items()}, graded_sets[0][0].real()[k]))
    got = contrast_interval(per_seed, metric, combine, num_resamples=resamples, resample_real=False,
                            **graded_sets[0][0].settings)
    n = len(per_seed[0][0][next(iter(sets))]["labels"])
    return {k: Estimate.from_interval(normal_interval(v), n, seeds) for k, v in got.items()} if isinstance(got, dict) \
        else Estimate.from_interval(normal_interval(got), n, seeds)


def half_ids(num_samples: int, half: int) -> list[int]:
    """One half of the sample ids ``0..N-1``, in whole blocks of one id per class (id ``i`` has class ``i % 10``):
    blocks ``i // 10`` of parity ``half``. Choosing on one half and measuring on the other avoids selection bias."""
    return [i for i in range(num_samples) if (i // 10) % 2 == half]


def u_shape(g: Graded, scales: list[str]) -> dict:
    """Whether a CFG sweep's fd_digits is U-shaped, without selection bias: the best interior scale on half 0 of the
    ids (:func:`half_ids`; mean fd over seeds), and on half 1 the paired differences fd(s = 1) - fd(best),
    fd(s_max) - fd(best) and the smaller of the two (all three must be > 0 for a U)."""
    from .products import quality_from_products

    if "1" not in scales or len(scales) < 3:
        raise LookupError("the CFG sweep needs s = 1 and at least one scale between it and the largest")
    n = len(g.products(scales[0])[0]["ids"])
    choose, measure = half_ids(n, 0), half_ids(n, 1)
    if not choose or not measure:
        raise LookupError(f"{n} samples per scale are too few to choose on one half and measure on the other")
    low, high = "1", scales[-1]
    interior = [s for s in scales if float(low) < float(s) < float(high)]

    def fd_on_half(s: str) -> float:
        vals = [quality_from_products(keep_ids(p, choose), real, metrics=["fd_digits"], **g.settings)["fd_digits"]
                for p, real in zip(g.products(s), g.real())]
        return sum(vals) / len(vals)

    chosen = {s: fd_on_half(s) for s in interior}
    best = min(chosen, key=chosen.get)
    sets = {"low": (g, low), "best": (g, best), "high": (g, high)}
    out = {"best_scale": float(best), "chosen_on": "sample ids of half 0", "measured_on": "sample ids of half 1",
           "fd_half0": chosen, "low_scale": float(low), "high_scale": float(high)}
    combine = {"low_minus_best": lambda v: v["low"] - v["best"], "high_minus_best": lambda v: v["high"] - v["best"],
               "u_depth": lambda v: np.minimum(v["low"] - v["best"], v["high"] - v["best"])}
    out.update({k: e.as_json() for k, e in contrast(sets, "fd_digits", combine, ids=measure).items()})
    return out


def table_of(g: Graded, metrics: tuple[str, ...] = FIGURES) -> dict:
    """The run's table: per scale the figures' means over training seeds (``scales``) and their estimates
    (``estimates``: value, 95 % interval, n, seeds), the judge on real data and the real-vs-real floor at this n."""
    out = {k: g.tables[0][k] for k in ("fd_name", "num_samples", "real", "real_floor") if k in g.tables[0]}
    out["seeds"], out["scales"], out["estimates"] = g.seeds, {}, {}
    for s in g.tables[0]["scales"]:
        out["scales"][s] = {k: float(np.mean([t["scales"][s][k] for t in g.tables])) for k in g.tables[0]["scales"][s]}
        out["estimates"][s] = {m: estimate(g, s, m).as_json() for m in metrics if m in out["scales"][s]}
    return out


def cell(table: dict, scale: str, metric: str) -> str:
    """A figure of a run's table (:func:`table_of`) as a report prints it: with its interval when it has one."""
    est = table.get("estimates", {}).get(scale, {}).get(metric)
    return Estimate.from_json(est).text() if est else fmt(table["scales"][scale].get(metric))


def table_markdown(tables: dict[str, dict], scale_name: str = "scale", metrics: tuple[str, ...] = FIGURES) -> list[str]:
    """Runs' tables (``{label: table_of(...)}``) as one markdown table: each figure per scale with its interval, and a
    last row: real vs real at the same n (the first table's floor)."""
    rows = [[label, s, *(cell(t, s, k) for k in metrics)] for label, t in tables.items() for s in t["scales"]]
    floor = next(iter(tables.values())).get("real_floor") if tables else None
    if floor:
        rows.append([f"real vs real (n = {fmt(floor['num_samples'])})", "—",
                     *(fmt(floor["metrics"].get(k)) for k in metrics)])
    return md_table(["run", scale_name, *metrics], rows)
