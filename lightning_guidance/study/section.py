"""What a section of the study is: declared once, it plans its steps and reads only what they wrote.

A :class:`Section` holds its key and title, the data it samples, the preset fields that size it, ``plan(plan)``
(adds its steps to the :class:`~.plan.Plan`), ``analyse(products, result)`` (fills its :class:`SectionResult` from
the :class:`Products` of those steps: tables, figures, numbers) and the paper claims its numbers measure. A section
that cannot be analysed raises ``LookupError`` naming what is missing (:meth:`Products.step` does). Every number a
section writes into markdown goes through :func:`fmt` (or ``Estimate.text``), from a value it also stores in
``numbers``, so the report never shows a figure that ``report.json`` does not hold.

A claim is graded from the report's numbers alone: ``Claim.measure(numbers)`` returns a :class:`Measurement` whose
``effect`` is an :class:`~..stats.Estimate` of the signed effect the paper's claim is about (paired over the same
sample ids and training seeds where two settings are compared); the verdict is read from its interval
(:meth:`~..stats.Estimate.grade`: agree / disagree / inconclusive), with its effect size and the sample count its
noise says would decide it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..io.shards import manifest_shards, read_extra, read_shard
from ..io.tables import fmt
from ..stats import Estimate
from .plan import DONE_STATES, Plan, Step


@dataclass(frozen=True)
class Measurement:
    """What a claim's numbers show: ``text`` (in words, every number through fmt), ``effect`` (the signed effect the
    claim is about, with its interval) and ``expected_sign`` (+1 or -1: the sign the paper predicts for it)."""

    text: str
    effect: Estimate
    expected_sign: int = 1
    effect_unit: str = ""  # what the effect is a difference of, e.g. "fd_digits"


@dataclass(frozen=True)
class Claim:
    """A paper's claim and how our numbers (``{section key: its report.json entry}``) measure it; ``measure`` raises
    ``LookupError`` when a number it needs is missing (the row says so)."""

    key: str
    paper: str
    claim: str
    paper_direction: str
    measure: Callable[[dict], Measurement] | None  # numbers of all sections -> Measurement
    likely_reason: str  # shown only when we disagree
    not_measured: str = ""  # why a claim without ``measure`` is not measured
    reconstruction: bool = False  # the method is our reconstruction from the paper's abstract (marked in the report)


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    data: str  # what it samples or reads, in words (--list)
    preset_fields: tuple[str, ...]  # the Preset fields that size it
    plan: Callable[[Plan], object]
    analyse: Callable[[Products, SectionResult], None]
    claims: tuple[Claim, ...] = ()
    reads: tuple[str, ...] = ()  # sections whose results it draws on: planned and analysed before it


@dataclass
class SectionResult:
    key: str
    title: str
    run_dir: Path
    status: str = "ok"
    reason: str = ""  # why it failed (names the failed step)
    numbers: dict = field(default_factory=dict)
    markdown: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # paths relative to the run folder

    def figure(self, fig, name: str, caption: str) -> None:
        """Save ``fig`` as ``figures/<name>`` of the run folder and show it in the markdown."""
        from ..io.figures import save_figure

        save_figure(fig, Path(self.run_dir) / "figures" / name)
        self.figures.append(f"figures/{name}")
        self.markdown += [f"![{caption}](figures/{name})", ""]

    def fail(self, reason: str) -> None:
        self.status, self.reason, self.numbers, self.markdown, self.figures = "failed", reason, {}, [], []

    def as_json(self) -> dict:
        return {"title": self.title, "status": self.status, "reason": self.reason, "figures": self.figures,
                "numbers": self.numbers}


class Products:
    """What a section's analysis reads: the preset, the steps and how they ended, their products, and the results
    of the sections analysed before it."""

    def __init__(self, preset, run_dir: Path, steps: dict[str, Step], status: dict[str, str]):
        self.preset, self.run_dir, self.steps, self.status = preset, Path(run_dir), steps, status
        self.results: dict[str, SectionResult] = {}  # the sections analysed so far
        self.memo: dict = {}  # what several sections read and one computes once (e.g. the digits tables)

    def ok(self, name: str) -> bool:
        return self.status.get(name) in DONE_STATES

    def step(self, name: str) -> Step:
        """A finished step; ``LookupError`` naming it (and, when it was blocked, the inputs that failed) if not."""
        if not self.ok(name):
            bad = [n for n in self.steps[name].needs if not self.ok(n)] if name in self.steps else []
            why = f" ({self.failed_inputs(bad).removeprefix('inputs failed: ')})" if bad else ""
            raise LookupError(f"input step {name} {self.status.get(name, 'did not run')}{why}")
        return self.steps[name]

    def config_value(self, name: str, dotted: str):
        """A value of the config the step ran with (``runs/<name>/configs/<step>.yaml``)."""
        node = yaml.safe_load((self.run_dir / "configs" / f"{name}.yaml").read_text())
        for part in dotted.split("."):
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    def samples(self, name: str, trajectories: bool = False) -> dict[float, tuple]:
        """``{sweep value: (samples, labels[, trajectories (steps + 1, N, ...)])}`` of a finished ``predict`` step."""
        import torch

        out = {}
        for value, paths in manifest_shards(self.step(name).out_dir).items():
            shards = [read_shard(p) for p in paths]
            got = (torch.cat([s.samples for s in shards]), torch.cat([s.labels for s in shards]))
            if trajectories:
                got += (torch.cat([torch.from_numpy(read_extra(p, "trajectory")) for p in paths], dim=1),)
            out[float(value)] = got
        return out

    def failed_inputs(self, names: list[str]) -> str:
        bad = [f"{n} {self.status.get(n, 'not planned')}" for n in names if not self.ok(n)]
        return "inputs failed: " + ", ".join(bad) if bad else "no inputs"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table (io.tables) followed by a blank line."""
    from ..io.tables import markdown_table

    return [*markdown_table(header, rows), ""]


def numbers_of(numbers: dict, key: str) -> dict:
    """A section's numbers for a claim; ``LookupError`` when it did not run or failed."""
    sec = numbers.get(key)
    if not sec:
        raise LookupError(f"section {key} was not run")
    if sec["status"] != "ok":
        raise LookupError(f"section {key} failed")
    return sec["numbers"]


def monotone_up(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation of ``ys`` with ``xs`` (0 when ``ys`` is constant)."""
    from scipy.stats import spearmanr

    return float(spearmanr(xs, ys)[0]) if len(set(ys)) > 1 else 0.0


def grade(claim: Claim, numbers: dict) -> dict:
    """One row of the agreement table: the claim, what we measured, the effect with its interval, n and seeds, the
    effect size, the verdict and the sample count that would decide it (never guessed: a claim whose numbers are
    missing is "not measured", with why)."""
    row = {"key": claim.key, "paper": claim.paper, "claim": claim.claim, "paper_direction": claim.paper_direction,
           "reconstruction": claim.reconstruction, "effect": None, "expected_sign": None, "effect_unit": "",
           "effect_size": None, "samples_needed": None, "likely_reason": ""}
    if claim.measure is None:
        return {**row, "measured": f"not measured: {claim.not_measured}", "verdict": "not measured"}
    try:
        got = claim.measure(numbers)
    except (LookupError, ValueError, ZeroDivisionError) as err:
        return {**row, "measured": f"not measured: {err}".replace("'", ""), "verdict": "not measured"}
    if isinstance(got, tuple):  # a section not yet on the verdict API: a point comparison, shown as such
        measured, agree = got
        return {**row, "measured": measured, "verdict": ("agree" if agree else "disagree") + " (no interval)",
                "likely_reason": "" if agree else claim.likely_reason}
    row.update(measured=got.text, effect=got.effect.as_json(), expected_sign=got.expected_sign,
               effect_unit=got.effect_unit, **got.effect.grade(got.expected_sign))
    row["likely_reason"] = claim.likely_reason if row["verdict"] == "disagree" else ""
    return row


def agreement(claims: list[Claim], numbers: dict) -> list[dict]:
    return [grade(c, numbers) for c in claims]


def agreement_markdown(rows: list[dict]) -> list[str]:
    """The agreement table, a note on its columns, and the count of verdicts."""
    def effect(r: dict) -> str:
        if r["effect"] is None:
            return "—"
        e = Estimate.from_json(r["effect"])
        sign = {1: "> 0", -1: "< 0"}[r["expected_sign"]]
        return f"{e.text()} (paper: {sign})"

    def size(r: dict) -> str:
        e = r["effect"]
        return "—" if e is None else f"{fmt(e['n'])} × {fmt(e['seeds'])}"

    table = [[r["paper"], r["claim"] + (" †" if r["reconstruction"] else ""), r["paper_direction"], r["measured"],
              effect(r), size(r), fmt(r["effect_size"]), r["verdict"], fmt(r["samples_needed"]), r["likely_reason"]]
             for r in rows]
    counts = verdict_counts(rows)
    return [*md_table(["paper", "claim", "paper's direction", "we measured", "effect [95 % interval]",
                       "n × seeds", "effect size", "verdict", "n needed", "likely reason"], table),
            "Effect: the signed difference the claim is about, with its 95 % bootstrap interval (over sample ids, and "
            "over training seeds where there are several); the verdict is *agree* when the interval lies on the "
            "paper's side of 0, *disagree* when it lies on the other side, *inconclusive* when it holds 0. n × seeds: "
            "samples per setting and training seeds. Effect size: the effect in units of the per-sample noise. "
            "n needed: samples per setting at which the interval would exclude 0 with 80 % power, if the measured "
            "effect and noise are the truth. † the method is our reconstruction from the paper's abstract.", "",
            f"Verdicts: {fmt(counts['agree'])} agree, {fmt(counts['disagree'])} disagree, "
            f"{fmt(counts['inconclusive'])} inconclusive, {fmt(counts['not measured'])} not measured"
            + (f"; {fmt(counts['no interval'])} point comparisons without an interval" if counts["no interval"]
               else "") + ".", ""]


def verdict_counts(rows: list[dict]) -> dict[str, int]:
    """How many claims agree, disagree, are inconclusive, are not measured (and are point comparisons)."""
    out = {v: sum(r["verdict"] == v for r in rows) for v in ("agree", "disagree", "inconclusive", "not measured")}
    out["no interval"] = sum(r["verdict"].endswith("(no interval)") for r in rows)
    return out
