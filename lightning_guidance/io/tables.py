"""Result tables as files: a Markdown table (for reports) next to the JSON of the same figures, written atomically."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from .atomic import atomic_write_text


def fmt(value, digits: int = 4) -> str:
    """One way to print a number everywhere (reports and their tests): ``g`` format with ``digits`` significant
    digits; ``—`` for None."""
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


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table; cells are already formatted strings."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table followed by a blank line: a block of a report."""
    return [*markdown_table(header, rows), ""]


def write_table(folder: str | Path, name: str, data: dict, intro: str, columns: Sequence[str],
                rows: Sequence[Sequence[str]]) -> tuple[Path, Path]:
    """``<folder>/<name>.json`` (``data``) and ``<folder>/<name>.md`` (``intro``, a blank line, the table)."""
    folder = Path(folder)
    json_path = atomic_write_text(folder / f"{name}.json", json.dumps(data, indent=2))
    md_path = atomic_write_text(folder / f"{name}.md", "\n".join([intro, "", *markdown_table(columns, rows)]) + "\n")
    return json_path, md_path
