"""What a section of the study is: declared once, it plans its steps and reads only what they wrote.

A :class:`Section` holds its key and title, the data it samples, the preset fields that size it, ``plan(plan)``
(adds its steps to the :class:`~.plan.Plan`), ``analyse(products, result)`` (fills its :class:`SectionResult` from
the :class:`Products` of those steps: tables, figures, numbers) and the paper claims its numbers measure. A section
that cannot be analysed raises ``LookupError`` naming what is missing (:meth:`Products.step` does). Every number a
section writes into markdown goes through :func:`fmt`, from a value it also stores in ``numbers``, so the report
never shows a figure that ``report.json`` does not hold.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..io.shards import manifest_shards, read_extra, read_shard
from .plan import DONE_STATES, Plan, Step


@dataclass(frozen=True)
class Claim:
    """A paper's claim and how our numbers (``{section key: its report.json entry}``) measure it."""

    key: str
    paper: str
    claim: str
    paper_direction: str
    measure: Callable[[dict], tuple[str, bool]] | None  # numbers of all sections -> (what we measured, agrees)
    likely_reason: str  # shown only when we disagree
    not_measured: str = ""  # why a claim without ``measure`` is not measured


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


def fmt(value, digits: int = 4) -> str:
    """One way to print a number everywhere (report and test): ``g`` format with ``digits`` significant digits."""
    if value is None:
        return "—"
    if isinstance(value, (bool, int)):
        return str(value)
    v = float(value)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


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


def agreement(claims: list[Claim], numbers: dict) -> list[dict]:
    """Each claim with the direction the paper reports, what we measured and the verdict (never guessed: a claim
    whose numbers are missing is "not measured")."""
    rows = []
    for c in claims:
        if c.measure is None:
            measured, verdict = f"not measured: {c.not_measured}", "not measured"
        else:
            try:
                measured, agree = c.measure(numbers)
                verdict = "agree" if agree else "disagree"
            except (LookupError, ValueError, ZeroDivisionError) as err:
                measured, verdict = f"not measured: {err}".replace("'", ""), "not measured"
        rows.append({"key": c.key, "paper": c.paper, "claim": c.claim, "paper_direction": c.paper_direction,
                     "measured": measured, "verdict": verdict,
                     "likely_reason": c.likely_reason if verdict == "disagree" else ""})
    return rows


def agreement_markdown(rows: list[dict]) -> list[str]:
    table = [[r["paper"], r["claim"], r["paper_direction"], r["measured"], r["verdict"], r["likely_reason"]]
             for r in rows]
    return md_table(["paper", "claim", "paper's direction", "we measured", "verdict", "likely reason"], table)
