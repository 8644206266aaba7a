"""Mutation testing of the math layer and the shard/checkpoint IO with mutmut, outside the default CI.

    python scripts/dev/mutation_test.py                          # every module below, on the working tree
    python scripts/dev/mutation_test.py --modules io toy         # some of them (a later run may add the rest)
    python scripts/dev/mutation_test.py --rev <commit>           # the tree of a commit (e.g. the score before a change)

It copies the source (the working tree, or ``--rev``) into a scratch folder (``--workdir``, default
``/tmp/lg-mutation/<rev or worktree>``), writes mutmut's settings into that copy's pyproject.toml, runs
``mutmut run`` niced there and writes a summary (mutants, killed, survivors with their diffs) as JSON and
markdown into the scratch folder. Nothing in the repository is touched. Rerunning with the same workdir keeps the
results of mutants already run (mutmut's cache), so a run cut short can be finished later.

Per mutant, mutmut runs only the tests that executed the mutated function while it collected its statistics; the
candidate tests are the fast math/IO test files in ``FAST_TESTS`` (none runs the CLI), which keeps a mutant at a
few seconds. ``pip install -e '.[mutation]'`` installs mutmut.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import io as _io
from pathlib import Path

from tree_copy import copy_working_tree

ROOT = Path(__file__).resolve().parents[2]
PKG = "lightning_guidance"

# module name -> glob patterns (mutmut's only_mutate), relative to the repository root. Both the old layout and the
# layered one (guidance's plug in diffusion/) are covered by the folder globs.
MODULES = {
    "diffusion": [f"{PKG}/diffusion/*.py"],
    "guidance": [f"{PKG}/guidance/*.py"],
    "calibration": [f"{PKG}/calibration/*.py"],
    "toy": [f"{PKG}/toy/*.py"],
    "io": [f"{PKG}/io/shards.py", f"{PKG}/io/checkpoints.py"],
}
MATH_LAYER = ("diffusion", "guidance", "calibration", "toy")

# fast test files that exercise these modules without running the CLI (those absent in a revision are skipped)
FAST_TESTS = [
    "tests/test_samplers.py", "tests/test_schedules.py", "tests/test_parameterization.py",
    "tests/test_gaussian_mixture.py", "tests/test_fractal.py",
    "tests/test_guidance_oracles.py", "tests/test_guidance_terms.py", "tests/test_guidance_direction.py",
    "tests/test_calibration.py", "tests/test_io.py", "tests/test_math_boundaries.py",
    "tests/test_cfg_variants.py", "tests/test_sampling_guards.py", "tests/test_score_formulas.py",
    # the fast tests of a file that also runs the CLI or slow fits (a node id: those are not run per mutant)
    "tests/test_ddp_training.py::test_global_batch_draws_are_the_one_process_draws",
    "tests/test_exact_scores.py::test_sliced_wasserstein_in_one_dimension_is_scipys_wasserstein",
    "tests/test_exact_scores.py::test_knn_recall_by_hand",
]

# mutmut's statuses: these count as killed; "survived" and "no tests" (no test ran the mutated function) as not
# killed; "not checked" (not run yet) is left out of the score
STATUS_KILLED = {"killed", "timeout", "segfault", "caught by type check"}
STATUS_NOT_KILLED = {"survived", "no tests", "suspicious"}


def in_sample(name: str, percent: float) -> bool:
    """A fixed pseudo-random share of the mutants (by a hash of the name, so every run picks the same ones)."""
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) % 10_000 < percent * 100


def mutant_results(src: Path) -> dict[str, str]:
    """Every generated mutant's status, read from mutmut's per-file ``.meta`` files."""
    from mutmut.stats import status_by_exit_code

    found = {}
    for meta in (src / "mutants").rglob("*.meta"):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            found[name] = status_by_exit_code[code]
    return found


def copy_source(rev: str | None, dest: Path) -> None:
    """The tree of ``rev``, or the working tree's tracked and untracked-not-ignored files, into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    if rev:
        tar = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
        with tarfile.open(fileobj=_io.BytesIO(tar)) as archive:
            archive.extractall(dest, filter="data")
        return
    copy_working_tree(ROOT, dest)


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def configure(src: Path, modules: list[str], tests: list[str]) -> None:
    patterns = [p for m in modules for p in MODULES[m]]
    settings = f"""

[tool.mutmut]
source_paths = ["{PKG}"]
also_copy = ["configs"]
only_mutate = {toml_list(patterns)}
pytest_add_cli_args_test_selection = {toml_list(tests)}
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x", "-n", "0"]
process_isolation = "forkserver"
use_git_change_detection = false
timeout_multiplier = 10.0
timeout_constant = 5.0
"""
    pyproject = src / "pyproject.toml"
    text = pyproject.read_text()
    text = re.sub(r"\n\[tool\.mutmut\].*?(?=\n\[|\Z)", "", text, flags=re.S)
    pyproject.write_text(text + settings)


def module_of(mutant: str) -> str:
    """``lightning_guidance.diffusion.ddim.x_ddim_step__mutmut_3`` -> ``diffusion`` (``io`` for io files)."""
    return mutant.split(".")[1]


def function_hashes(src: Path) -> dict[str, str]:
    """mutmut's hash of each mutated function's source, by the mutants' common prefix (``pkg.module.x_function``)."""
    found = {}
    for meta in (src / "mutants").rglob("*.meta"):
        module = str(meta.relative_to(src / "mutants"))[:-len(".py.meta")].replace("/", ".")
        for function, digest in json.loads(meta.read_text()).get("hash_by_function_name", {}).items():
            found[f"{module}.{function}"] = digest
    return found


def carried_kills(workdir: Path | list[Path] | None, src: Path | None = None) -> set[str]:
    """The mutants an earlier run killed whose function is unchanged: same module, same name, same source hash
    (mutmut's own test for reusing a result), so the mutant is the same code. With ``src`` None, every kill.
    Several earlier runs: the union (a run that carried kills records them as not checked)."""
    if workdir is None:
        return set()
    if isinstance(workdir, list):
        return set().union(*(carried_kills(w, src) for w in workdir))
    killed = {name for name, status in mutant_results(workdir / "src").items() if status in STATUS_KILLED}
    if src is None:
        return killed
    before, now = function_hashes(workdir / "src"), function_hashes(src)
    prefix = lambda name: name.rsplit("__mutmut_", 1)[0]  # noqa: E731
    return {name for name in killed if before.get(prefix(name)) is not None
            and before.get(prefix(name)) == now.get(prefix(name))}


def summarize(src: Path, modules: list[str], percent: float, carried: set[str] = frozenset()) -> dict:
    per_module: dict[str, dict] = {m: {"mutants": 0, "checked": 0, "killed": 0, "survived": [], "no_tests": []}
                                   for m in modules}
    for name, status in sorted(mutant_results(src).items()):
        status = "killed" if name in carried and status == "not checked" else status
        m = module_of(name)
        if m not in per_module or not in_sample(name, percent):
            continue
        entry = per_module[m]
        entry["mutants"] += 1
        if status in STATUS_KILLED:
            entry["killed"] += 1
        elif status == "no tests":
            entry["no_tests"].append(name)
        elif status in STATUS_NOT_KILLED:
            entry["survived"].append(name)
        else:
            continue  # not checked yet
        entry["checked"] += 1
    for entry in per_module.values():
        entry["score"] = round(entry["killed"] / entry["checked"], 4) if entry["checked"] else None
    math = [per_module[m] for m in MATH_LAYER if m in per_module]
    killed, checked = sum(e["killed"] for e in math), sum(e["checked"] for e in math)
    return {"sample_percent": percent, "carried_kills": len(carried), "modules": per_module,
            "math_layer": {"killed": killed, "checked": checked,
                           "score": round(killed / checked, 4) if checked else None}}


def write_report(src: Path, summary: dict, out: Path, diffs: bool = True) -> None:
    lines = [f"# Mutation run ({summary['sample_percent']:g} % sample of the mutants)", "",
             "| module | mutants in sample | checked | killed | survived | no test ran it | score |",
             "|---|---|---|---|---|---|---|"]
    for m, e in summary["modules"].items():
        score = "-" if e["score"] is None else f"{100 * e['score']:.1f} %"
        lines.append(f"| {m} | {e['mutants']} | {e['checked']} | {e['killed']} | {len(e['survived'])} "
                     f"| {len(e['no_tests'])} | {score} |")
    ml = summary["math_layer"]
    if ml["checked"]:
        lines.append(f"\nMath layer: {ml['killed']} / {ml['checked']} killed ({100 * ml['score']:.1f} %).")
    lines.append("\n## Survivors (and mutants no test ran)\n")
    for m, e in summary["modules"].items():
        for name in e["survived"] + e["no_tests"]:
            diff = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=src, capture_output=True,
                                  text=True).stdout if diffs else ""
            lines += [f"### {name}", "```diff", diff.strip(), "```", ""]
    out.write_text("\n".join(lines) + "\n")


def run_mutmut(src: Path, names: list[str], max_children: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", LG_TEST_THREADS="1",
               PYTHONDONTWRITEBYTECODE="1")
    subprocess.run(["nice", "-n", "10", sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children),
                    *names], cwd=src, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="+", choices=list(MODULES), default=list(MODULES))
    parser.add_argument("--rev", help="mutate the tree of this commit instead of the working tree")
    parser.add_argument("--workdir", type=Path, help="scratch folder (kept, so that a rerun resumes)")
    parser.add_argument("--sample", type=float, default=100.0,
                        help="percent of the mutants to run, a fixed pseudo-random share (default: all)")
    parser.add_argument("--max-children", type=int, default=2, help="mutants run in parallel")
    parser.add_argument("--carry-killed-from", type=Path, nargs="+", metavar="WORKDIR",
                        help="an earlier run: its killed mutants of functions whose source is unchanged count as "
                             "killed without a rerun (valid when the tests only grew stronger), the others are run")
    parser.add_argument("--tests", nargs="+", metavar="TEST",
                        help="candidate tests instead of FAST_TESTS (files or node ids). With --carry-killed-from an "
                             "earlier run of all the fast tests, naming only the tests added since then scores the "
                             "change in minutes: a mutant the earlier tests did not kill can only be killed by a new "
                             "one (its survivors then read 'no tests' when no new test runs their function)")
    parser.add_argument("--only-checked-in", type=Path, metavar="WORKDIR",
                        help="run only the mutants an earlier run of the same code has checked (to compare a run cut "
                             "short with one of the new tests on the same mutants)")
    parser.add_argument("--fresh", action="store_true", help="copy the source anew and forget earlier results")
    parser.add_argument("--report-only", action="store_true", help="summarise an earlier run of this workdir")
    parser.add_argument("--no-diffs", action="store_true", help="report.md without each survivor's diff (faster)")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path("/tmp/lg-mutation") / (args.rev or "worktree")
    src = workdir / "src"
    if not args.report_only:
        if args.fresh or not (src / "mutants").exists():  # an existing copy keeps mutmut's cache of results
            shutil.rmtree(src, ignore_errors=True)
            copy_source(args.rev, src)
        tests = [t for t in (args.tests or FAST_TESTS) if (src / t.partition("::")[0]).is_file()]
        configure(src, args.modules, tests)
        print(f"mutmut in {src} over {', '.join(args.modules)}; tests: {', '.join(tests)}", flush=True)
        if not mutant_results(src):  # generate the mutants and collect which tests run which function
            run_mutmut(src, ["no-such-mutant"], args.max_children)
        if not (src / "mutants" / "mutmut-stats.json").is_file():
            print(f"mutmut could not run the tests unmutated (see above); try: cd {src}/mutants && "
                  f"python -m pytest {' '.join(tests)}", file=sys.stderr)
            return 1
        carried = carried_kills(args.carry_killed_from, src)
        only = None
        if args.only_checked_in:  # the mutants an earlier (cut short) run got to, under today's names
            only = {name for name, status in mutant_results(args.only_checked_in / "src").items()
                    if status != "not checked"}
        todo = [name for name, status in sorted(mutant_results(src).items())
                if status == "not checked" and module_of(name) in args.modules and in_sample(name, args.sample)
                and name not in carried and (only is None or name in only)]
        print(f"{len(todo)} mutants to run", flush=True)
        for i in range(0, len(todo), 500):  # in chunks, so that the command line stays short
            run_mutmut(src, todo[i:i + 500], args.max_children)
    summary = summarize(src, args.modules, args.sample, carried_kills(args.carry_killed_from, src))
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_report(src, summary, workdir / "report.md", diffs=not args.no_diffs)
    for m, e in summary["modules"].items():
        score = "-" if e["score"] is None else f"{100 * e['score']:.1f} %"
        print(f"{m:12s} mutants {e['mutants']:5d}  checked {e['checked']:5d}  killed {e['killed']:5d}  "
              f"survived {len(e['survived']):4d}  no test {len(e['no_tests']):4d}  score {score}")
    ml = summary["math_layer"]
    if ml["checked"]:
        print(f"math layer: {ml['killed']}/{ml['checked']} killed = {100 * ml['score']:.1f} %")
    print(f"survivors with diffs: {workdir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
