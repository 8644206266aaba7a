"""The study's sections, in report order: the one list that the runner, the report, the SLURM chain, ``--sections``
and ``--list`` read. Adding a section is one module declaring a :class:`~.section.Section` (its steps, its analysis,
its claims; see docs/architecture.md), its sizes in :class:`~.presets.Preset`, and its line here."""

from __future__ import annotations

from pathlib import Path

from . import (digits_calibration, digits_cfg, digits_cg, digits_grids, digits_postprocessor, ece_vs_fd, fractal,
               fractal_benchmark, quality, toy1d)
from .plan import Plan
from .section import Section

SECTIONS: tuple[Section, ...] = (toy1d.SECTION, fractal.SECTION, fractal_benchmark.SECTION, digits_cfg.SECTION,
                                 digits_cg.SECTION, digits_calibration.SECTION, digits_postprocessor.SECTION,
                                 ece_vs_fd.SECTION, quality.SECTION, digits_grids.SECTION)
KEYS = tuple(s.key for s in SECTIONS)
CLAIMS = [claim for s in SECTIONS for claim in s.claims]


def choose(keys: list[str] | None) -> list[str]:
    """The requested section keys in report order (all when none is named)."""
    unknown = [k for k in keys or () if k not in KEYS]
    if unknown:
        raise ValueError(f"unknown section {', '.join(unknown)}; choose from {', '.join(KEYS)}")
    return [k for k in KEYS if not keys or k in keys]


def with_inputs(keys: list[str]) -> list[Section]:
    """The requested sections and every section they read, in report order."""
    wanted = set(keys)
    for s in reversed(SECTIONS):  # a section reads only sections listed before it
        if s.key in wanted:
            wanted |= set(s.reads)
    return [s for s in SECTIONS if s.key in wanted]


def plan_study(preset, run_dir: Path, configs: Path, keys: list[str]) -> Plan:
    """Every step of the requested sections and of the sections they read (``plan.sections``)."""
    plan = Plan(preset, run_dir, configs)
    plan.sections = with_inputs(keys)
    for s in plan.sections:
        plan.section = s.key
        s.plan(plan)
    return plan
