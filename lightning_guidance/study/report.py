"""Assemble ``runs/<name>/report.json`` (every number the report shows) and ``report.md`` (made from it).

Sections run one by one; a section that raises, or whose input steps failed, is marked failed with the reason and
the others still render. When every step was skipped and the existing report was made from the same step markers,
nothing is rewritten: re-running a finished study changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from pathlib import Path

from ..io.atomic import atomic_write_text
from .overview import agreement, agreement_markdown, analyse_quality
from .results import SectionResult, fmt, md_table

TITLES = {
    "toy1d": "1. 1D two-class mixture: trajectories and distance from the decision boundary",
    "fractal_panels": "2. 2D fractal: ground truth, CG and CFG at several scales, before and after the post-processor",
    "fractal_benchmark": "3. Exact-distribution benchmark on the fractal",
    "digits_cfg": "4. Digits, classifier-free guidance: a fine scale sweep",
    "digits_cg": "5. Digits, classifier guidance mirroring EluCD's tables",
    "digits_calibration": "6. Digits, calibration and regularised guidance",
    "digits_postprocessor": "7. Digits, the one-for-all-scales postprocessor",
    "ece_vs_fd": "8. Integral ECE vs fd_digits across the classifier-guided runs",
    "quality_vs_scale": "9. Quality vs scale, one figure per dataset (same seeds)",
}


def markers_digest(ctx) -> str:
    h = hashlib.sha256()
    for name in sorted(ctx.steps):
        path = ctx.run_dir / "steps" / f"{name}.json"
        h.update(name.encode())
        h.update(path.read_bytes() if path.is_file() else b"-")
    h.update(json.dumps(sorted(ctx.sections)).encode())
    return h.hexdigest()


def _guarded(key: str, fn, *args) -> list[SectionResult]:
    try:
        out = fn(*args)
        return list(out) if isinstance(out, tuple) else [out]
    except LookupError as err:  # a needed step failed or did not run
        return [SectionResult(key, TITLES[key], status="failed", reason=str(err).strip("'\""))]
    except Exception as err:  # noqa: BLE001 - the other sections still render
        tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
        return [SectionResult(key, TITLES[key], status="failed", reason=f"{type(err).__name__}: {err} ({tb})")]


def run_sections(ctx, requested: list[str], digits_runs: dict) -> dict[str, SectionResult]:
    from .digits import analyse_digits
    from .fractal import analyse_fractal
    from .toy1d import analyse_toy1d

    done: dict[str, SectionResult] = {}
    wanted = set(ctx.sections)
    if "toy1d" in wanted:
        for r in _guarded("toy1d", analyse_toy1d, ctx):
            done[r.key] = r
    if wanted & {"fractal_panels", "fractal_benchmark"}:
        results = _guarded("fractal_panels", analyse_fractal, ctx)
        if len(results) == 1 and results[0].status == "failed":  # both sections share the failure
            results.append(SectionResult("fractal_benchmark", TITLES["fractal_benchmark"], "failed", results[0].reason))
        for r in results:
            done[r.key] = r
    digits = [k for k in ("digits_cfg", "digits_cg", "digits_calibration", "digits_postprocessor", "ece_vs_fd")
              if k in wanted]
    if digits:
        try:
            done.update(analyse_digits(ctx, digits_runs))
        except Exception as err:  # noqa: BLE001
            for k in digits:
                done[k] = SectionResult(k, TITLES[k], "failed", f"{type(err).__name__}: {err}")
    if "quality_vs_scale" in wanted:
        done["quality_vs_scale"] = _guarded("quality_vs_scale", analyse_quality, ctx, done)[0]
    return {k: done[k] for k in TITLES if k in requested and k in done}


def write_report(ctx, meta: dict, requested: list[str], digits_runs: dict, t0: float, console=None) -> dict:
    run_dir = Path(ctx.run_dir)
    json_path, md_path = run_dir / "report.json", run_dir / "report.md"
    digest = markers_digest(ctx)
    all_skipped = all(s["status"] == "skipped" for s in meta["steps"].values())
    if all_skipped and json_path.is_file() and md_path.is_file():
        old = json.loads(json_path.read_text())
        if old.get("markers_digest") == digest and old.get("sections_requested") == requested:
            if console is not None:
                console.print("every step finished earlier and is still valid; the report is current (unchanged)")
            return old
    sections = run_sections(ctx, requested, digits_runs)
    numbers = {k: v.as_json() for k, v in sections.items()}
    claims = agreement(numbers)
    wall = time.perf_counter() - t0
    report = {**meta, "markers_digest": digest, "wall_seconds": round(wall, 1), "sections": numbers,
              "agreement": claims}
    atomic_write_text(json_path, json.dumps(report, indent=2, default=str))
    atomic_write_text(md_path, "\n".join(render(report, sections)) + "\n")
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
              f"- Commit: `{report['commit']}`{dirty}.",
              f"- Started {report['started_utc']} UTC; wall time {fmt(report['wall_seconds'])} s, "
              f"{report['jobs']} steps at a time, {report['threads_per_step']} thread(s) each.",
              "- Quality of digit samples is `fd_digits`: the Fréchet distance in the feature space of a judge "
              "classifier the suite trains (never used for guidance), not Inception FID.", ""]
    lines += ["## Agreement with the papers", "",
              "The direction each paper reports, next to the direction our run measured (never the papers' numbers "
              "passed off as ours).", "", *agreement_markdown(report["agreement"])]
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


def publish(run_dir: Path, dest: Path) -> Path:
    """Copy what a reader needs (report.md, report.json, figures/, configs/) into ``dest``: built in a temp folder
    next to it and renamed into place; an existing ``dest`` is kept as ``<dest>.previous-<n>``."""
    import shutil
    import tempfile

    run_dir, dest = Path(run_dir), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    for name in ("report.md", "report.json"):
        shutil.copy2(run_dir / name, tmp / name)
    for folder in ("figures", "configs"):
        if (run_dir / folder).is_dir():
            shutil.copytree(run_dir / folder, tmp / folder)
    for path in tmp.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    tmp.chmod(0o755)
    if dest.exists():
        n = 1
        while dest.with_name(f"{dest.name}.previous-{n}").exists():
            n += 1
        dest.rename(dest.with_name(f"{dest.name}.previous-{n}"))
    tmp.rename(dest)
    return dest
