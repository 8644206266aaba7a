"""Run every benchmark of this folder, print all their ratios as one table, and update bench/README.md.

Each ``bench/*.py`` (but this file and ``common.py``) runs as its own process with its default arguments (plus
``--quick``'s smaller ones); every output line of the form ``... ratio ...: <number>`` and every row of a printed
``| kind | seconds | x unguided |`` table becomes one row. The table goes between the ``run_all`` markers of
bench/README.md (added at its end the first time), with the date and the machine; the rest of the README is kept.

    python bench/run_all.py [--quick] [--only guidance_cost ...] [--no-readme]
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- run_all:begin -->", "<!-- run_all:end -->"
QUICK = {"lightning_vs_plain": ["--steps", "40", "--repeats", "2"], "cfg_batched_vs_two_calls": ["--repeats", "5"],
         "ddim_vs_diffusers": ["--repeats", "2", "--steps", "20"], "guidance_cost": ["--repeats", "1", "--steps", "10"],
         "cfg_variant_cost": ["--repeats", "1", "--steps", "5", "--batch", "16"],
         "diffusers_sampling_overhead": ["--quick", "--repeats", "2"], "diffusers_decoder_memory": ["--quick"]}
RATIO_LINE = re.compile(r"^(?P<label>[^:]*ratio[^:]*):\s*(?P<value>-?\d+(?:\.\d+)?)", re.IGNORECASE)
TABLE_ROW = re.compile(r"^\|\s*(?P<label>[^|]+?)\s*\|\s*(?P<sec>\d+(?:\.\d+)?)\s*\|\s*(?P<value>\d+(?:\.\d+)?)\s*\|$")


def benchmarks() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in ("run_all", "common"))


def parse(output: str) -> list[tuple[str, float]]:
    """``[(what, ratio)]`` from a benchmark's printed output."""
    rows = []
    for line in output.splitlines():
        line = line.strip()
        m = RATIO_LINE.match(line)
        if m:
            rows.append((m["label"].strip(), float(m["value"])))
            continue
        m = TABLE_ROW.match(line)
        if m:
            rows.append((f"{m['label']} / unguided", float(m["value"])))
    return rows


def run(name: str, quick: bool, timeout: float) -> tuple[list[tuple[str, float]], float, str]:
    cmd = [sys.executable, str(HERE / f"{name}.py"), *(QUICK.get(name, []) if quick else [])]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent,
                              env={**__import__("os").environ, "PYTHONPATH": f"{HERE}:{HERE.parent}"})
    except subprocess.TimeoutExpired:
        return [], time.perf_counter() - start, f"timed out after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return [], seconds, f"failed (exit {proc.returncode}): {tail[0]}"
    rows = parse(proc.stdout)
    return rows, seconds, "" if rows else "printed no ratio"


def table(results: dict[str, tuple[list[tuple[str, float]], float, str]]) -> list[str]:
    lines = ["| benchmark | what | ratio |", "|---|---|---|"]
    for name, (rows, seconds, problem) in results.items():
        if problem:
            lines.append(f"| `{name}.py` | {problem} | — |")
        for label, value in rows:
            lines.append(f"| `{name}.py` | {label} | {value:.3f} |")
    return lines


def update_readme(path: Path, lines: list[str], header: str) -> None:
    block = "\n".join([BEGIN, header, "", *lines, END])
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## All ratios, one run (`python bench/run_all.py`)\n\n" + block + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats and steps (a smoke run, noisier ratios)")
    p.add_argument("--only", nargs="+", help=f"some of: {', '.join(benchmarks())}")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark")
    p.add_argument("--no-readme", action="store_true", help="print only; leave bench/README.md as it is")
    a = p.parse_args(argv)
    names = benchmarks()
    if a.only:
        unknown = sorted(set(a.only) - set(names))
        if unknown:
            p.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(names)}")
        names = [n for n in names if n in a.only]
    results = {}
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run(name, a.quick, a.timeout)
    sys.path.insert(0, str(HERE))
    from common import machine

    lines = table(results)
    print("\n".join(lines))
    if not a.no_readme:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        header = f"Measured {stamp}{' (--quick)' if a.quick else ''}; machine: {machine()}."
        update_readme(HERE / "README.md", lines, header)
    return 1 if any(problem for _, _, problem in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
