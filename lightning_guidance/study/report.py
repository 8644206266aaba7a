"""Assemble ``runs/<name>/report.json`` (every number the report shows) and ``report.md`` (made from it).

Sections run one by one; a section that raises, or whose input steps failed, is marked failed with the reason and
the others still render. When every step was skipped and the existing report was made from the same step markers,
nothing is rewritten: re-running a finished study changes nothing.

A run that ran steps (or was interrupted) appends its start and wall time to ``run.json`` in the run folder; a report
rebuilt without running a step (``--report-only``, or a re-run that only skipped steps) shows that run's wall time
and says when it was rebuilt, never the rebuild's own few seconds.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
import traceback
from collections import Counter
from pathlib import Path

from ..io.atomic import atomic_write_text
from ..launch.provenance import commit, machine  # noqa: F401 - the study's callers read them here
from ..launch.steps import DONE_STATES
from ..io.tables import fmt, md_table
from ..launch.products import Products
from ..stats.claims import agreement, agreement_markdown, verdict_counts
from .section import SectionResult
from .sections import CLAIMS, SCOPE

SCOPE_KEYS = {c.key for c in SCOPE}


def markers_digest(run_dir: Path, steps, sections: list[str]) -> str:
    h = hashlib.sha256()
    for name in sorted(steps):
        path = Path(run_dir) / "steps" / f"{name}.json"
        h.update(name.encode())
        h.update(path.read_bytes() if path.is_file() else b"-")
    h.update(json.dumps(sorted(sections)).encode())
    return h.hexdigest()


RUN_RECORD = "run.json"
RUN_SETTINGS = ("machine", "jobs", "threads_per_step")  # a run's, kept by a rebuilt report


def read_runs(run_dir: Path) -> list[dict]:
    """The runs recorded in ``run_dir/run.json`` (oldest first): each ``started_utc``, ``finished_utc``,
    ``wall_seconds``, ``steps_run``, ``exit`` and the ``RUN_SETTINGS``."""
    path = Path(run_dir) / RUN_RECORD
    return json.loads(path.read_text())["runs"] if path.is_file() else []


def record_run(run_dir: Path, run: dict) -> None:
    atomic_write_text(Path(run_dir) / RUN_RECORD, json.dumps({"runs": [*read_runs(run_dir), run]}, indent=2))


def timing(run_dir: Path, started_utc: str, wall: float, rebuilt: bool, previous: dict) -> dict:
    """The report's timing fields: this run's, or for a rebuild the recorded run's (the last run.json entry that ran a
    step, else the ``previous`` report's) with the rebuild's own time beside it. Attempts stopped before any step ran
    are recorded (``steps_run`` 0) but count as no run."""
    runs = read_runs(run_dir)
    ran = [r for r in runs if r.get("steps_run", 1)]  # not an attempt stopped before any step ran
    out: dict = {}
    if not rebuilt:
        out = {"started_utc": started_utc, "wall_seconds": round(wall, 1)}
    else:
        source = ran[-1] if ran else previous
        out = {"started_utc": source.get("started_utc"), "wall_seconds": source.get("wall_seconds")}
        for key in RUN_SETTINGS:  # where and how the run ran (not the rebuild): its record, else the report it wrote
            value = source.get(key, previous.get(key))
            if value is not None:
                out[key] = value
        out.update(rebuilt_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   rebuild_seconds=round(wall, 1))
    # a run is recorded after its report is written: for a run every entry is earlier, for a rebuild all but the last
    earlier = ran[:-1] if rebuilt else ran
    if earlier:
        out.update(earlier_runs=len(earlier),
                   earlier_runs_seconds=round(sum(r["wall_seconds"] for r in earlier), 1))
    return out


def attribute_steps(run_dir: Path, steps: dict[str, dict], previous: dict) -> None:
    """Set each finished step's ``commit`` and ``dirty``: those its marker recorded; for a marker from before markers
    recorded them, those the ``previous`` report gave that step, else that report's own (the run that wrote it)."""
    for name, entry in steps.items():
        marker_path = Path(run_dir) / "steps" / f"{name}.json"
        if entry["status"] not in DONE_STATES or not marker_path.is_file():
            continue
        marker = json.loads(marker_path.read_text())
        earlier = previous.get("steps", {}).get(name, {})
        source = marker if "commit" in marker else earlier if "commit" in earlier else previous
        entry["commit"] = source.get("commit") or "not recorded"
        entry["dirty"] = source.get("dirty")


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
