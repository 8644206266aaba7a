"""What a section hands to the report: its numbers (all of them go to ``report.json``), the markdown made from those
numbers, and its figures. Every number a section writes into markdown goes through :func:`fmt`, from a value it
also stores in ``numbers``, so the report never shows a figure that ``report.json`` does not hold."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

STATUSES = ("ok", "failed")


def fmt(value, digits: int = 4) -> str:
    """One way to print a number everywhere (report and test): ``g`` format with ``digits`` significant digits."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
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


@dataclass
class SectionResult:
    key: str
    title: str
    status: str = "ok"
    reason: str = ""  # why it failed (names the failed step)
    numbers: dict = field(default_factory=dict)
    markdown: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # paths relative to the run folder

    def figure(self, path: Path, run_dir: Path, caption: str) -> None:
        rel = Path(path).resolve().relative_to(Path(run_dir).resolve())
        self.figures.append(str(rel))
        self.markdown += [f"![{caption}]({rel.as_posix()})", ""]

    def as_json(self) -> dict:
        return {"title": self.title, "status": self.status, "reason": self.reason, "figures": self.figures,
                "numbers": self.numbers}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    from ..io.atomic import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.set_layout_engine("constrained")  # titles and labels of neighbouring panels do not overlap
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return path
