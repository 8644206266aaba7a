"""Break the code on purpose, six plausible bugs one at a time, and show that the default CI tests catch each.

    python scripts/dev/break_and_test.py            # all six
    python scripts/dev/break_and_test.py ema ddim   # some of them (names below)

Each mutation is applied to a scratch copy of the working tree (tracked and untracked-not-ignored files) in a
temporary folder; the repository itself is never touched. The relevant test files run there with ``-x``; a mutation
is *caught* when pytest fails. The file to break is found by its text (exactly one occurrence in the package), so
the script keeps working when modules move. Exit status 0 when every mutation is caught.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tree_copy import copy_working_tree

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Mutation:
    name: str
    bug: str
    old: str
    new: str
    tests: tuple[str, ...]
    select: str = ""  # pytest -k expression, to run only the tests about this piece of code


MUTATIONS = [
    Mutation("cfg-halves", "CFG halves swapped (conditional and null outputs exchanged)",
             "eps_c, eps_u = both.chunk(2)", "eps_u, eps_c = both.chunk(2)",
             ("tests/test_samplers.py", "tests/test_nets.py", "tests/test_parameterization.py")),
    Mutation("p-uncond", "p_uncond ignored (no label is ever dropped to the null class)",
             "drop = draws.rand(n, device=x0.device) < p_uncond", "drop = draws.rand(n, device=x0.device) < 0.0",
             ("tests/test_cfg_training.py",), "null_class"),
    Mutation("ddim-eps", "DDIM's eps coefficient sqrt(1 - abar_prev - sigma^2) replaced by sqrt(1 - abar_t)",
             "math.sqrt(max(1.0 - abar_prev - sigma**2, 0.0)) * eps", "math.sqrt(1.0 - abar_t) * eps",
             ("tests/test_samplers.py",)),
    Mutation("respacing", "respacing off by one (the kept steps end at T - 2 instead of T - 1)",
             "torch.linspace(0, self.num_train_steps - 1, num_steps", "torch.linspace(0, self.num_train_steps - 2, num_steps",
             ("tests/test_schedules.py", "tests/test_samplers.py")),
    Mutation("ema-warmup", "EMA decay not warmed up",
             "decay = min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay", "decay = self.decay",
             ("tests/test_cfg_training.py",), "ema"),
    Mutation("smece-bisection", "Smooth ECE bandwidth search stopped one step early",
             "for _ in range(refine_steps):", "for _ in range(refine_steps - 1):",
             ("tests/test_calibration.py",)),
]


def apply(tree: Path, m: Mutation) -> Path:
    hits = [p for p in sorted((tree / "lightning_guidance").rglob("*.py")) if m.old in p.read_text()]
    if len(hits) != 1 or hits[0].read_text().count(m.old) != 1:
        raise SystemExit(f"{m.name}: expected the text {m.old!r} exactly once in lightning_guidance/, found it in "
                         f"{[str(h.relative_to(tree)) for h in hits]}; update MUTATIONS in {Path(__file__).name}")
    hits[0].write_text(hits[0].read_text().replace(m.old, m.new))
    return hits[0]


def main(argv: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not argv or m.name in argv]
    unknown = set(argv) - {m.name for m in MUTATIONS}
    if unknown:
        raise SystemExit(f"unknown mutation(s) {sorted(unknown)}; choose from {[m.name for m in MUTATIONS]}")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    results = []
    for m in chosen:
        with tempfile.TemporaryDirectory(prefix=f"lg-break-{m.name}-") as scratch:
            tree = Path(scratch)
            copy_working_tree(ROOT, tree)
            path = apply(tree, m)
            tests = [t for t in m.tests if (tree / t).is_file()]
            start = time.time()
            select = ["-k", m.select] if m.select else []
            done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *select,
                                   *tests],
                                  cwd=tree, env=env, capture_output=True, text=True)
            failed = [line.split(" ")[1] for line in done.stdout.splitlines() if line.startswith("FAILED ")]
            caught = done.returncode != 0 and bool(failed)
            results.append(caught)
            print(f"{'CAUGHT' if caught else 'MISSED'}  {m.name:16s} {m.bug}\n"
                  f"        {path.relative_to(tree)}: {m.old!r} -> {m.new!r}\n"
                  f"        pytest -x {' '.join(select + tests)}: exit {done.returncode} in {time.time() - start:.0f} s; "
                  f"first failing test: {failed[0] if failed else '-'}", flush=True)
            if not caught:
                print(done.stdout[-3000:], done.stderr[-2000:])
    print(f"{sum(results)} of {len(results)} deliberate bugs caught by the default tests")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
