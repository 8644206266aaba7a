"""A paper's claim measured by a study's numbers, and graded: the agreement table.

``Claim.measure(numbers)`` (``numbers``: ``{section key: its report.json entry}``) returns a :class:`Measurement`
whose ``effect`` is an :class:`~.estimate.Estimate` of the signed effect the paper's claim is about (paired over the
same sample ids and training seeds where two settings are compared); the verdict is read from its interval
(:meth:`~.estimate.Estimate.grade`: agree / disagree / inconclusive, :mod:`.verdict`), with its effect size and the
sample count its noise says would decide it. A claim whose numbers are missing is "not measured", with why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..io.tables import fmt, md_table
from .estimate import Estimate


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


def numbers_of(numbers: dict, key: str) -> dict:
    """A section's numbers for a claim; ``LookupError`` when it did not run or failed."""
    sec = numbers.get(key)
    if not sec:
        raise LookupError(f"section {key} was not run")
    if sec["status"] != "ok":
        raise LookupError(f"section {key} failed")
    return sec["numbers"]


def stored_effect(section: str, path: tuple, words: Callable[[dict, Estimate], str], expected_sign: int = 1,
                  unit: str = "", missing: str = "") -> Callable[[dict], Measurement]:
    """A claim's ``measure`` that reads an effect the section stored: the :class:`~.estimate.Estimate` JSON at
    ``path`` in ``section``'s numbers (each step a key, or a function of those numbers giving the key), told in
    ``words(section numbers, effect)``; ``LookupError(missing)`` when an entry on the path is absent."""
    def measure(numbers: dict) -> Measurement:
        got = sec = numbers_of(numbers, section)
        for step in path:
            got = got.get(step(sec) if callable(step) else step)
            if got is None:
                raise LookupError(missing or f"section {section} stored no {step}")
        effect = Estimate.from_json(got)
        return Measurement(words(sec, effect), effect, expected_sign, unit)
    return measure


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
