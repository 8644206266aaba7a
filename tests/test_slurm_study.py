"""`cli.py study --launcher slurm` on a real one-host SLURM (scripts/slurm/slurm_local.sh; slow).

The study (`--preset micro --sections digits_cfg`: judge and CFG fits, sampling as a 2-task job array plus its
collector, grading with the judge) runs as jobs that each start after the jobs of the steps they read, `--status`
shows them completed, its report.json numbers (every section and the agreement with the papers) equal the local
runner's on the same preset, and a re-submission skips every finished step.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from helpers import CONFIGS, ROOT
from test_slurm import slurm_env  # noqa: F401 - the module-scoped local cluster fixture

pytestmark = pytest.mark.slow

WAIT_S = 1200


def step_times(log: Path) -> tuple[datetime, datetime]:
    """(first start, last end) that a template wrote to a job's log (date -Is)."""
    stamps = [datetime.fromisoformat(m) for m in re.findall(r"\.sbatch\] (\S+) ", log.read_text())]
    return min(stamps), max(stamps)


BUILTIN = ["--preset", "micro", "--sections", "digits_cfg"]
# what each step of the micro digits_cfg section reads (the plan's needs; checked against --list below)
NEEDS = {"digits-judge": [], "digits-judge-conv": [], "digits-cfg": [], "sample-digits-cfg": ["digits-cfg"],
         "grade-digits-cfg": ["digits-cfg", "sample-digits-cfg", "digits-judge"],
         "grade-conv-digits-cfg": ["digits-cfg", "sample-digits-cfg", "digits-judge-conv"]}


# sampling as a job array of two tasks (each writes every other shard) and its collector; every job on one CPU
SLURM = {"default": {"cpus_per_task": 1}, "steps": {"sample-*": {"array": 2}}}


def builtin(env: dict, runs: Path, name: str, *args: str) -> str:
    config = runs / "study.yaml"
    config.write_text(yaml.safe_dump({"slurm": SLURM}))
    cmd = [sys.executable, "cli.py", "study", "--config", str(config), *BUILTIN, "--runs-root", str(runs), "--name",
           name, *args]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def wait_for_empty_queue(env: dict, logs: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, "the chain did not finish in time\n" + "\n".join(
            p.read_text()[-1500:] for p in sorted(logs.glob("*.out")))
        time.sleep(3)


@pytest.mark.timeout(4 * WAIT_S)
def test_builtin_micro_study_as_a_slurm_chain_equals_the_local_runner(tmp_path, slurm_env):  # noqa: F811
    from lightning_guidance.study.presets import get_preset
    from lightning_guidance.study.sections import plan_study

    plan = plan_study(get_preset("micro"), tmp_path / "plan", CONFIGS, ["digits_cfg"])
    assert {n: sorted(s.needs) for n, s in plan.steps.items()} == {n: sorted(v) for n, v in NEEDS.items()}

    builtin(slurm_env, tmp_path, "local")
    out = builtin(slurm_env, tmp_path, "slurm", "--launcher", "slurm")
    jobs = dict(re.findall(r"^(\S+): job (\d+)", out, flags=re.M))
    assert set(jobs) == {*NEEDS, "report"}, out
    run = tmp_path / "slurm"
    logs = run / "slurm" / "logs"
    wait_for_empty_queue(slurm_env, logs)

    status = builtin(slurm_env, tmp_path, "slurm", "--launcher", "slurm", "--status")
    assert all(re.search(rf"^{name}\s.*COMPLETED$", status, flags=re.M) for name in NEEDS), status + "\n" + \
        "\n".join(p.read_text()[-1500:] for p in sorted(logs.glob("*.out")))
    # in order: each step's job started after the jobs of the steps it reads had ended
    spans = {name: step_times(logs / f"{name}-{jobs[name]}.out") for name in NEEDS}
    for name, needs in NEEDS.items():
        for need in needs:
            assert spans[need][1] <= spans[name][0], (need, name, spans)
    array_logs = sorted(logs.glob(f"sample-digits-cfg-{int(jobs['sample-digits-cfg']) - 1}_*.out"))
    assert len(array_logs) == 2  # the two tasks, between the CFG fit and their collector
    for log in array_logs:
        start, end = step_times(log)
        assert spans["digits-cfg"][1] <= start and end <= spans["sample-digits-cfg"][0]
    report_log = (logs / f"report-{jobs['report']}.out").read_text()
    slurm_report, local_report = (json.loads((tmp_path / n / "report.json").read_text()) for n in ("slurm", "local"))
    assert slurm_report["machine"].get("slurm_job") == jobs["report"], report_log[-3000:]
    assert slurm_report["sections"]["digits_cfg"]["status"] == "ok", report_log[-3000:]
    assert slurm_report["sections"] == local_report["sections"]
    assert slurm_report["agreement"] == local_report["agreement"]
    assert {n: s["status"] for n, s in slurm_report["steps"].items()} == dict.fromkeys(NEEDS, "done")
    assert all(slurm_report["steps"][n]["seconds"] > 0 for n in NEEDS)  # the jobs' wall times, from their markers

    # a re-submission skips every finished step (the report job recorded them as the local runner would)
    again = builtin(slurm_env, tmp_path, "slurm", "--launcher", "slurm")
    assert all(f"{name}: finished, skipped" in again for name in NEEDS), again
    assert re.search(r"^report: job \d+", again, flags=re.M), again
    wait_for_empty_queue(slurm_env, logs)
