"""What a section of the study is: declared once, it plans its steps and reads only what they wrote.

A :class:`Section` holds its key and title, the data it samples, the preset fields that size it, ``plan(plan)``
(adds its steps to the :class:`~.plan.Plan`), ``analyse(products, result)`` (fills its :class:`SectionResult` from
the :class:`~..launch.products.Products` of those steps: tables, figures, numbers) and the paper claims its numbers measure. A section
that cannot be analysed raises ``LookupError`` naming what is missing (``Products.step`` does). Every number a
section writes into markdown goes through :func:`fmt` (or ``Estimate.text``), from a value it also stores in
``numbers``, so the report never shows a figure that ``report.json`` does not hold.

The claims (:class:`~..stats.claims.Claim`) are graded from the report's numbers alone (:mod:`..stats.claims`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..io.figures import save_figure
from ..launch.products import Products
from ..stats.claims import Claim
from .plan import Plan


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
        save_figure(fig, Path(self.run_dir) / "figures" / name)
        self.figures.append(f"figures/{name}")
        self.markdown += [f"![{caption}](figures/{name})", ""]

    def fail(self, reason: str) -> None:
        self.status, self.reason, self.numbers, self.markdown, self.figures = "failed", reason, {}, [], []

    def as_json(self) -> dict:
        return {"title": self.title, "status": self.status, "reason": self.reason, "figures": self.figures,
                "numbers": self.numbers}
