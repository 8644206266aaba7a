"""Assemble ``runs/<name>/report.json`` (every number the report shows) and ``report.md`` (made from it).

Sections run one by one; a section that raises, or whose input steps failed, is marked failed with the reason and
the others still render. When every step was skipped and the existing report was made from the same step markers,
nothing is rewritten: re-running a finished study changes nothing.

A report rebuilt without running a step (``--report-only``, or a re-run that only skipped steps) shows the recorded
run's wall time and says when it was rebuilt, never the rebuild's own few seconds (:mod:`..launch.run_record`).
"""

from __future__ import annotations

import json
import time
import traceback
from collections import Counter

from ..io.atomic import atomic_write_text
from ..io.tables import fmt, md_table
from ..launch.products import Products
from ..launch.run_record import attribute_steps, markers_digest, timing
from ..stats.claims import agreement, agreement_markdown, verdict_counts
from .section import SectionResult
from .sections import CLAIMS, SCOPE

SCOPE_KEYS = {c.key for c in SCOPE}


def analyse(plan, status: dict[str, str], requested: list[str]) -> dict[str, SectionResult]:
    """Every section of the plan in order (a section that raises is marked failed, the others still render); the
    requested ones."""
    products = Products(plan.preset, plan.root, plan.steps, status)
    for section in plan.sections:
        res = products.results[section.key] = SectionResult(section.key, section.title, plan.root)
        try:
            section.analyse(products, res)
        except LookupError as err:  # a needed step failed or did not run
            res.fail(str(err).strip("'\""))
        except Exception as err:  # noqa: BLE001 - the other sections still render
            tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
            res.fail(f"{type(err).__name__}: {err} ({tb})")
    return {k: r for k, r in products.results.items() if k in requested}


def write_report(plan, status: dict[str, str], meta: dict, requested: list[str], t0: float, console=None,
                 rebuilt: bool = False) -> dict:
    """Write report.json and report.md; ``rebuilt``: no step ran (the header keeps the recorded run's wall time)."""
    run_dir = plan.root
    json_path, md_path = run_dir / "report.json", run_dir / "report.md"
    digest = markers_digest(run_dir, plan.steps, [s.key for s in plan.sections])
    previous = json.loads(json_path.read_text()) if json_path.is_file() else {}
    all_skipped = all(s["status"] == "skipped" for s in meta["steps"].values())
    if all_skipped and previous and md_path.is_file():
        if previous.get("markers_digest") == digest and previous.get("sections_requested") == requested:
            if console is not None:
                console.print("every step finished earlier and is still valid; the report is current (unchanged)")
            return previous
    sections = analyse(plan, status, requested)
    numbers = {k: v.as_json() for k, v in sections.items()}
    wall = time.perf_counter() - t0
    attribute_steps(run_dir, meta["steps"], previous)
    report = {**meta, **timing(run_dir, meta["started_utc"], wall, rebuilt, previous), "markers_digest": digest,
              "sections": numbers, "agreement": agreement(CLAIMS, numbers)}
    report["verdicts"] = verdict_counts([r for r in report["agreement"] if r["key"] not in SCOPE_KEYS])
    report["statistics"] = {"interval_percent": 95, "power_percent": 80}  # what the agreement note names
    # report.json last: its markers digest says the report is current, so it must not be newer than report.md
    atomic_write_text(md_path, "\n".join(render(report, sections)) + "\n")
    atomic_write_text(json_path, json.dumps(report, indent=2, default=str))
    return report


def render(report: dict, sections: dict[str, SectionResult]) -> list[str]:
    m, p = report["machine"], report["preset"]
    lines = [f"# {report['title']}", ""]
    if report.get("description"):
        lines += [report["description"].strip(), ""]
    dirty = " (with uncommitted changes)" if report.get("dirty") else ""
    lines += [f"- Preset: **{p['name']}** — {p['summary']}.",
              f"- Machine: {m['host']}, {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} "
              f"({m['torch_threads']} threads), GPU: {m['gpu']}.",
              f"- Commit: `{report['commit']}`{dirty}.{steps_commits(report)}",
              f"- {run_timing(report)}, {report['jobs']} step{'s' * (report['jobs'] != 1)} at a time, "
              f"{report['threads_per_step']} thread(s) each.{other_threads(report)}",
              "- Quality of digit samples is `fd_digits`: the Fréchet distance in the feature space of a judge "
              "classifier the suite trains (never used for guidance), not Inception FID.", ""]
    lines += ["## Agreement with the papers", "",
              "The direction each paper reports, next to the direction our run measured (never the papers' numbers "
              "passed off as ours).", "",
              *agreement_markdown([r for r in report["agreement"] if r["key"] not in SCOPE_KEYS]), *scope(report)]
    for key, sec in sections.items():
        lines += [f"## {sec.title}", ""]
        if sec.status != "ok":
            lines += [f"**{sec.status.upper()}**: {sec.reason}", ""]
        lines += sec.markdown
    rows = [[n, s["section"], s["command"], s["status"], fmt(s["seconds"]), f"[config]({s['config']})"]
            for n, s in report["steps"].items()]
    lines += ["## Steps", "", "Every step is one `cli.py` call on the config it links (re-run it by hand with "
              "`python cli.py <command> --config runs/<name>/<config>`); logs are in `logs/`.", "",
              *md_table(["step", "section", "command", "status", "seconds", "config"], rows)]
    return lines


def scope(report: dict) -> list[str]:
    """What the study does not measure (each with why), the methods it reconstructs from an abstract, and what its
    toy data are."""
    rows = report["agreement"]
    made = sorted({f"{r['paper']}: {r['claim']}" for r in rows if r["reconstruction"]})
    return ["## Scope", "", "Claims of the papers this study does not measure:", "",
            *(f"- {r['paper']}: {r['claim']}. {r['measured'].capitalize()}." for r in rows if r["key"] in SCOPE_KEYS),
            "", "Methods that are our reconstruction from a paper's abstract (†): "
            + ("; ".join(made) if made else "none declared") + ".", "",
            "The 2D fractal of sections 2 and 3 is Karras et al.'s (autoguidance) class-conditional fractal, with its "
            "exact density; Zhao & Schwing's 2D data of growing class entanglement are not reproduced.", ""]


def other_threads(report: dict) -> str:
    """`` **A different run** ...`` when the steps ran at another thread count than the preset's
    (--allow-other-threads): training differs with the thread count, so its numbers are another draw."""
    fixed = report["preset"].get("threads_per_step")
    if fixed is None or report["threads_per_step"] == fixed:
        return ""
    return (f" **A different run:** the preset fixes {fmt(fixed)} thread(s) per step; training differs with the "
            "thread count, so these numbers are another draw of the experiment, not its report.")


def steps_commits(report: dict) -> str:
    """`` Its steps' products were made at ...`` when some step's product was made by other code than this report's."""
    def code(entry: dict) -> str:
        return f"`{entry['commit']}`" + (" with uncommitted changes" if entry.get("dirty") else "")

    counts = Counter(code(entry) for entry in report["steps"].values() if "commit" in entry)
    if set(counts) <= {code(report)}:
        return ""
    made = "; ".join(f"{c} ({n} step{'s' * (n != 1)})" for c, n in counts.items())
    return f" Its steps' products were made at: {made}."


def run_timing(report: dict) -> str:
    if report.get("wall_seconds") is None:
        text = "Wall time of the run not recorded (its steps ran elsewhere, e.g. as SLURM jobs)"
    else:
        text = f"Started {report['started_utc']} UTC; wall time {fmt(report['wall_seconds'])} s"
    if report.get("earlier_runs"):
        text += (f" (after {fmt(report['earlier_runs'])} earlier run(s) of this folder, "
                 f"{fmt(report['earlier_runs_seconds'])} s in all)")
    if report.get("rebuilt_utc"):
        text += (f"; this report was rebuilt from the run's files at {report['rebuilt_utc']} UTC without running a "
                 f"step ({fmt(report['rebuild_seconds'])} s)")
    return text
