"""`cli.py study --launcher slurm`: the chain that goes to sbatch, checked against a stand-in sbatch/squeue that
record what they are asked (fast, default run), and bad input stopped before anything is submitted.
The real-SLURM run of a micro study is in tests/test_slurm_study.py (slow)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import ROOT
from lightning_guidance.launch.slurm import SlurmChain, SlurmStep

FAKE_SBATCH = """#!/bin/bash
# stand-in sbatch: log the call (one JSON list per line), answer the next job id
n=$(( $(wc -l < "$FAKE_DIR/calls" 2>/dev/null || echo 0) + 100 ))
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> "$FAKE_DIR/calls"
echo "$n"
"""
FAKE_SCANCEL = """#!/bin/bash
# stand-in scancel: log the ids
echo "$@" >> "$FAKE_DIR/cancelled"
"""
FAKE_SQUEUE = """#!/bin/bash
# stand-in squeue -h -t all -j <id> -o %T: the state written in $FAKE_DIR/state_<id>, else nothing
for ((i = 1; i <= $#; i++)); do [[ ${!i} == -j ]] && { j=$((i + 1)); id=${!j}; }; done
[[ -f $FAKE_DIR/state_$id ]] && cat "$FAKE_DIR/state_$id"
exit 0
"""


@pytest.fixture
def fake_slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE), ("scancel", FAKE_SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    os.environ["FAKE_DIR"] = str(tmp_path)
    yield bin_dir
    del os.environ["FAKE_DIR"]


def calls(tmp_path: Path) -> list[list[str]]:
    path = tmp_path / "calls"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def option(call: list[str], name: str) -> str | None:
    hits = [a.split("=", 1)[1] for a in call if a.startswith(name + "=")]
    return hits[-1] if hits else None


STEPS = [SlurmStep("fit-a", "fit", ("--config", "a.yaml"), nodes=2, ntasks_per_node=2, time="01:00:00"),
         SlurmStep("sample", "predict", ("--config", "s.yaml"), array=3, cpus_per_task=2),
         SlurmStep("grade", "test", ("--config", "s.yaml", "--config", "g.yaml"))]


def test_chain_is_submitted_in_order_with_afterok_and_resources(tmp_path, fake_slurm):
    chain = SlurmChain(tmp_path / "state", sbatch=str(fake_slurm / "sbatch"))
    ids = chain.submit(STEPS)
    made = calls(tmp_path)
    assert ids == {"fit-a": "100", "sample": "102", "grade": "103"}  # sample: array 101, then its collector 102
    fit, array, collect, grade = made
    assert fit[-1] == str(ROOT / "slurm/train.sbatch") and "CONFIG=a.yaml" in option(fit, "--export").split(",")
    assert (option(fit, "--nodes"), option(fit, "--ntasks-per-node"), option(fit, "--time")) == ("2", "2", "01:00:00")
    assert option(fit, "--dependency") is None
    assert option(array, "--array") == "0-2" and option(array, "--dependency") == "afterok:100"
    assert "LG_SHARD_ARRAY=1" in option(array, "--export") and option(array, "--cpus-per-task") == "2"
    assert option(collect, "--array") is None and option(collect, "--dependency") == "afterok:101"
    assert option(grade, "--dependency") == "afterok:102" and "SUBCOMMAND=test" in option(grade, "--export")
    assert grade[-2:] == ["--config", "g.yaml"] and "CONFIG=s.yaml" in option(grade, "--export").split(",")
    assert all(option(c, "--kill-on-invalid-dep") == "yes" for c in (array, collect, grade))
    assert [r["state"] for r in chain.status()] == ["GONE"] * 3  # the stand-in squeue knows no job


def test_resubmission_skips_finished_steps_and_keeps_queued_ones(tmp_path, fake_slurm):
    chain = SlurmChain(tmp_path / "state", sbatch=str(fake_slurm / "sbatch"))
    chain.submit(STEPS)
    # fit-a finished (what the template writes on success), sample still pending, grade failed and gone
    chain.done_file("fit-a").parent.mkdir(parents=True, exist_ok=True)
    chain.done_file("fit-a").write_text(json.dumps({"fingerprint": STEPS[0].fingerprint, "seconds": 3}))
    (tmp_path / "state_102").write_text("PENDING\n")
    before = len(calls(tmp_path))
    ids = chain.submit(STEPS)
    again = calls(tmp_path)[before:]
    assert ids == {"sample": "102", "grade": "104"}
    assert len(again) == 1 and option(again[0], "--dependency") == "afterok:102"
    assert [(r["name"], r["state"]) for r in chain.status()] == [("fit-a", "COMPLETED"), ("sample", "PENDING"),
                                                                  ("grade", "GONE")]
    # a changed step (other arguments) is no longer finished: submitted again, and the queued job behind the old
    # one is cancelled (by its ids) and submitted again behind the new one
    changed = [SlurmStep("fit-a", "fit", ("--config", "a.yaml", "--trainer.max_steps", "9"), nodes=2,
                         ntasks_per_node=2, time="01:00:00"), *STEPS[1:]]
    ids = chain.submit(changed)
    assert (tmp_path / "cancelled").read_text().split() == ["101", "102"]
    assert ids["fit-a"] == "105" and ids["sample"] == "107" and ids["grade"] == "108"


@pytest.mark.parametrize("step, message", [
    (SlurmStep("s", "fit", ("--trainer.devices", "4"), ntasks_per_node=2), "--trainer.devices 4 but its slurm"),
    (SlurmStep("s", "fit", ("--trainer.num_nodes=1",), nodes=2), "--trainer.num_nodes 1 but its slurm"),
    (SlurmStep("s", "fit", array=2), "fit steps cannot use it"),
    (SlurmStep("s", "predict", time="an hour"), "not an sbatch time"),
    (SlurmStep("s", "predict", nodes=0), "nodes must be a positive int"),
])
def test_contradicting_resources_are_named(step, message):
    with pytest.raises(ValueError, match=message):
        step.check()


# ---- the study as a chain --------------------------------------------------------------------------------------
MICRO_CFG = ["study", "--preset", "micro", "--sections", "digits_cfg"]


def builtin(tmp_path: Path, bin_dir: Path | None, *args: str, config: dict | None = None):
    """``cli.py study`` on the micro digits_cfg section: in this process with the stand-in SLURM first on PATH
    (returns its stdout), or, without ``bin_dir``, through the console with no sbatch anywhere (returns the run)."""
    extra = []
    if config is not None:
        (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
        extra = ["--config", str(tmp_path / "study.yaml")]
    argv = [*MICRO_CFG, *extra, "--runs-root", str(tmp_path / "runs"), "--name", "m", *args]
    if bin_dir is None:
        return subprocess.run([sys.executable, "cli.py", *argv], cwd=ROOT, env=dict(os.environ, PATH="/nonexistent"),
                              capture_output=True, text=True, timeout=300)
    from lightning_guidance.study.command import main

    out = io.StringIO()
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{bin_dir}:{path}"
    try:
        with contextlib.redirect_stdout(out):
            assert main(argv[1:]) == 0
    finally:
        os.environ["PATH"] = path
    return out.getvalue()


def test_builtin_study_submits_each_step_after_the_steps_it_reads(tmp_path, fake_slurm):
    out = builtin(tmp_path, fake_slurm, "--launcher", "slurm")
    judge, cfg, sample, grade, judge_conv, grade_conv, report = calls(tmp_path)
    run = tmp_path / "runs" / "m"
    assert [option(c, "--job-name") for c in (judge, cfg, sample, grade, judge_conv, grade_conv, report)] == [
        "lg-digits-judge", "lg-digits-cfg", "lg-sample-digits-cfg", "lg-grade-digits-cfg", "lg-digits-judge-conv",
        "lg-grade-conv-digits-cfg", "lg-report"]
    assert [option(c, "--dependency") for c in (judge, cfg, judge_conv)] == [None] * 3  # they read nothing
    assert option(sample, "--dependency") == "afterok:101"
    assert sorted(option(grade, "--dependency").removeprefix("afterok:").split(":")) == ["100", "101", "102"]
    # the second judge grades the same shards
    assert sorted(option(grade_conv, "--dependency").removeprefix("afterok:").split(":")) == ["101", "102", "104"]
    assert option(report, "--dependency") == "afterany:100:101:102:103:104:105"  # the report names what did not finish
    assert "--report-only" in option(report, "--wrap") and "--launcher" not in option(report, "--wrap")
    # the preset's resources; each step's config is the one the local runner writes
    assert all((option(c, "--cpus-per-task"), option(c, "--time")) == ("1", "00:30:00") for c in (judge, grade))
    assert f"CONFIG={run / 'configs' / 'digits-judge.yaml'}" in option(judge, "--export").split(",")
    assert judge[-1].endswith("slurm/train.sbatch") and grade[-1].endswith("slurm/predict.sbatch")
    assert "SUBCOMMAND=test" in option(grade, "--export").split(",")
    assert [line.split(": ")[0] for line in out.splitlines()[1:]] == [
        "digits-judge", "digits-cfg", "sample-digits-cfg", "grade-digits-cfg", "digits-judge-conv",
        "grade-conv-digits-cfg", "report"]

    status = builtin(tmp_path, fake_slurm, "--launcher", "slurm", "--status")
    assert len(status.splitlines()) == 8 and "GONE" in status

    # the judge's job succeeded (its marker and product), the CFG fit runs, sampling waits, grading failed: the
    # re-submission records the judge as finished, keeps the two live jobs and submits grading behind them
    fingerprints = {r["name"]: r["fingerprint"] for r in json.loads((run / "slurm" / "chain.json").read_text())["steps"]}
    (run / "slurm" / "done").mkdir()
    (run / "slurm" / "done" / "digits-judge.json").write_text(json.dumps({"fingerprint": fingerprints["digits-judge"],
                                                                        "job": "100", "seconds": 7}))
    (run / "digits" / "judge" / "checkpoints").mkdir(parents=True)
    (run / "digits" / "judge" / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (tmp_path / "state_101").write_text("RUNNING\n")
    (tmp_path / "state_102").write_text("PENDING\n")
    before = len(calls(tmp_path))
    again = builtin(tmp_path, fake_slurm, "--launcher", "slurm")
    assert "digits-judge: finished, skipped" in again and "digits-cfg: job 101" in again
    assert "sample-digits-cfg: job 102" in again
    new = calls(tmp_path)[before:]
    assert [option(c, "--job-name") for c in new] == ["lg-grade-digits-cfg", "lg-digits-judge-conv",
                                                      "lg-grade-conv-digits-cfg", "lg-report"]
    assert option(new[0], "--dependency") == "afterok:101:102"
    assert json.loads((run / "steps" / "digits-judge.json").read_text())["seconds"] == 7  # the runner's marker


def test_builtin_study_resources_come_from_the_study_config(tmp_path, fake_slurm):
    config = {"preset": "micro", "sections": ["digits_cfg"],
              "slurm": {"default": {"time": "02:00:00"},
                        "steps": {"digits-*": {"cpus_per_task": 2}, "digits-cfg": {"ntasks_per_node": 2},
                                  "sample-*": {"array": 3}}}}
    builtin(tmp_path, fake_slurm, "--launcher", "slurm", config=config)
    made = {option(c, "--job-name"): c for c in calls(tmp_path) if option(c, "--array") is None}
    cfg = made["lg-digits-cfg"]
    assert (option(cfg, "--ntasks-per-node"), option(cfg, "--cpus-per-task"), option(cfg, "--time")) == (
        "2", "2", "02:00:00")
    assert option(made["lg-digits-judge"], "--ntasks-per-node") == "1"
    # the step's config states the world size its job runs with
    written = yaml.safe_load((tmp_path / "runs" / "m" / "configs" / "digits-cfg.yaml").read_text())
    assert written["trainer"]["devices"] == 2
    assert [option(c, "--array") for c in calls(tmp_path) if option(c, "--array")] == ["0-2"]


@pytest.mark.parametrize("slurm, message", [
    ({"steps": {"digits-cfg": {"gpus": 2}}}, "study step 'digits-cfg': unknown slurm keys ['gpus']"),
    ({"steps": {"digits-cfg": {"array": 2}}}, "fit steps cannot use it"),
    ({"default": {"time": "soon"}}, "not an sbatch time"),
    ({"nodes": 2}, "study config slurm: a mapping with 'default'"),
])
def test_builtin_study_bad_resources_are_refused_before_submitting(tmp_path, fake_slurm, slurm, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        builtin(tmp_path, fake_slurm, "--launcher", "slurm", config={"preset": "micro", "slurm": slurm})
    assert calls(tmp_path) == []


def test_builtin_study_without_sbatch_says_so_before_anything_runs(tmp_path):
    done = builtin(tmp_path, None, "--launcher", "slurm")
    assert done.returncode != 0
    assert done.stderr.splitlines()[0].startswith("error: FileNotFoundError: --launcher slurm needs 'sbatch' on PATH")
    assert done.stdout == "" and not (tmp_path / "runs").exists()
