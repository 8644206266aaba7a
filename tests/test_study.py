"""The study end to end on the micro preset (every section, figure and claim), and its handling of bad input.

The micro run goes through the real CLI (``cli.py study``) and every step's real ``fit | predict | test``; steps run in
this process (``--in-process``) to spare the interpreter start-up per step. Its numbers mean nothing; the tests check
the report's structure and that every number it prints comes from ``report.json``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import CONFIGS

from lightning_guidance.cli import main
from lightning_guidance.launch.steps import StepRunner
from lightning_guidance.launch.steps import Step, apply_edits
from lightning_guidance.io.tables import fmt
from lightning_guidance.study.sections import CLAIMS, KEYS

NUMBER = re.compile(r"(?<![\w.\-/])-?(?:\d+(?:\.\d+)?|\.\d+)(?:e[+-]?\d+)?(?![\w.])")


def study(*args) -> int:
    try:
        main(["study", *[str(a) for a in args]])
        return 0
    except SystemExit as exit_:
        return int(exit_.code)


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    code = study("--config", "configs/digits/study.yaml", "--preset", "micro", "--in-process", "--runs-root", root,
                 "--name", "micro")
    run = root / "micro"
    report = json.loads((run / "report.json").read_text())
    bad = {n: s["status"] for n, s in report["steps"].items() if s["status"] not in ("done", "skipped")}
    assert code == 0 and not bad, f"micro study exited {code}; steps not done: {bad} (logs: {run / 'logs'})"
    return run


def json_numbers(node, out: set[str]) -> set[str]:
    """Every number of report.json as the report prints it, and every number token inside its strings and keys."""
    if isinstance(node, dict):
        for k, v in node.items():
            out.update(NUMBER.findall(str(k)))
            json_numbers(v, out)
    elif isinstance(node, list):
        for v in node:
            json_numbers(v, out)
    elif isinstance(node, bool) or node is None:
        pass
    elif isinstance(node, (int, float)):
        out.add(fmt(node))
    else:
        out.update(NUMBER.findall(str(node)))
    return out


def test_micro_report_has_every_section_figure_and_claim(micro):
    report = json.loads((micro / "report.json").read_text())
    md = (micro / "report.md").read_text()
    assert list(report["sections"]) == list(KEYS)
    for key, sec in report["sections"].items():
        assert sec["title"] in md
        assert sec["status"] == "ok", (key, sec["reason"])
        assert sec["figures"], key
        for fig in sec["figures"]:
            assert (micro / fig).stat().st_size > 1000 and f"]({fig})" in md  # a PNG, linked relative to the report
    assert [c["key"] for c in report["agreement"]] == [c.key for c in CLAIMS]
    for claim in CLAIMS:
        assert claim.claim in md
    for row in report["agreement"]:  # a section not yet on the verdict API: a point comparison "(no interval)"
        assert row["verdict"].removesuffix(" (no interval)") in ("agree", "disagree", "inconclusive", "not measured")
        assert bool(row["likely_reason"]) == row["verdict"].startswith("disagree")
        assert (row["effect"] is None) == (row["verdict"] == "not measured" or "(no interval)" in row["verdict"])
        assert "did not finish" not in row["measured"], row  # every step of this run finished: say why it is not posed
    assert report["verdicts"]["inconclusive"] + report["verdicts"]["agree"] + report["verdicts"]["disagree"] >= 2
    assert "not built" not in md.lower()
    for key in ("preset", "machine", "commit", "wall_seconds", "started_utc"):
        assert key in report
    assert "rebuilt_utc" not in report and "rebuilt from the run's files" not in md
    runs = json.loads((micro / "run.json").read_text())["runs"]  # the run record a rebuild reads its wall time from
    assert runs[-1]["wall_seconds"] == report["wall_seconds"] and runs[-1]["started_utc"] == report["started_utc"]
    assert f"**{report['preset']['name']}**" in md and report["commit"] in md


def test_the_postprocessor_and_the_cfg_variants_are_measured(micro):
    """Section 7 grades the unseen CFG scales before and after the flow; sections 2/3 show the fractal flows and score
    every modern CFG variant on the same model and seeds as CFG; their claims are measured, not skipped."""
    from lightning_guidance.study.digits import METRICS
    from lightning_guidance.study.fractal import VARIANTS, fractal_flows
    from lightning_guidance.study.fractal_benchmark import SCORES
    from lightning_guidance.study.presets import MICRO

    report = json.loads((micro / "report.json").read_text())
    sections = report["sections"]
    post = sections["digits_postprocessor"]["numbers"]
    unseen = [f"{s:g}" for s in MICRO.flow_unseen_scales]
    assert post["scales"] == unseen and post["train_scales"] == [f"{s:g}" for s in MICRO.flow_train_scales]
    for when in ("before", "after"):
        for s in unseen:
            assert set(METRICS) <= set(post[when]["scales"][s]), (when, s)
    assert "figures/digits_postprocessor.png" in sections["digits_postprocessor"]["figures"]
    assert "figures/fractal_postprocessor.png" in sections["fractal_panels"]["figures"]

    bench = sections["fractal_benchmark"]["numbers"]
    for key, _, _ in VARIANTS:
        assert key in bench["methods"] and bench["methods"][key]["family"] == "variant", key
        assert list(bench["methods"][key]["scales"]) == [f"{s:g}" for s in MICRO.fractal_variant_scales]
        for sc in bench["methods"][key]["scales"].values():
            assert {k for k, _ in SCORES} <= set(sc)
    assert bench["equal_wrong_class"]["ranking"]
    assert set(bench["postprocessed"]) == {f.key for f in fractal_flows(MICRO)} and not bench["postprocessed_failed"]
    for flow in bench["postprocessed"].values():
        assert len(flow["median_move_by_density_decile"]) == 10
        assert {k for k, _ in SCORES} <= set(flow["before"]) and {k for k, _ in SCORES} <= set(flow["after"])
    # same base model and seeds for every fractal method (the configs the steps ran)
    import yaml

    runs = [yaml.safe_load(p.read_text())["model"]["init_args"]
            for p in (micro / "configs").glob("sample-fractal-*.yaml")]
    assert len(runs) >= 7 + len(VARIANTS)
    assert len({r["checkpoint"] for r in runs}) == 1 and len({r.get("seed", 0) for r in runs}) == 1
    verdicts = {row["key"]: row["verdict"] for row in report["agreement"]}
    for key in ("postprocessor", "postprocessor_fractal", "postprocessor_moves", "autoguidance_variety"):
        assert verdicts[key].removesuffix(" (no interval)") in ("agree", "disagree", "inconclusive"), key

    # section 9 shows the post-processed sets as their own points, in its figures and its table
    series = sections["quality_vs_scale"]["numbers"]["series"]
    flows = bench["postprocessed"]
    fractal_post = series["fractal_postprocessed"]
    assert set(fractal_post) == {f["method"] for f in flows.values()}
    for flow in flows.values():
        curve = fractal_post[flow["method"]]
        i = curve["scale"].index(float(flow["scale"]))
        assert curve["mean_log_density"][i] == flow["after"]["mean_log_density"]
        assert curve["mean_log_density_before"][i] == flow["before"]["mean_log_density"]
    for when in ("before", "after"):
        curve = series["digits"][f"flow-unseen-{when}"]
        assert curve["scale"] == [float(s) for s in unseen]
        assert curve["fd_digits"] == [post[when]["scales"][s]["fd_digits"] for s in unseen]
    section9 = (micro / "report.md").read_text().split("## 9.")[1].split("\n## ")[0]
    for curve in [*fractal_post.values(), series["digits"]["flow-unseen-after"]]:
        assert f"| {curve['label']} |" in section9  # a row of the section's table


def test_the_toy_sections_measure_paths_exact_rows_and_unconditional_cg(micro):
    """Section 1: the path distance is the mean over the saved trajectory's states (recomputed here with numpy from
    the shards), the exact rows are the closed forms, classifier guidance of the unconditional model ran with the
    null class (cfg_scale 0) and its boundary claim is graded from an interval; section 3's wrong-class claim grades
    the unconditional-model CG run, paired scale 1 against the large scale."""
    import numpy as np
    import yaml

    from lightning_guidance.io.shards import manifest_shards, read_extra, read_shard
    from lightning_guidance.study.presets import MICRO
    from lightning_guidance.toy import exact_conditional_scores

    report = json.loads((micro / "report.json").read_text())
    toy = report["sections"]["toy1d"]["numbers"]
    verdicts = {row["key"]: row for row in report["agreement"]}
    for mu in MICRO.mus:
        info = toy["mus"][f"mu{mu:g}"]
        exact = exact_conditional_scores(mu, info["sigma"])
        assert {k: v["value"] for k, v in info["exact"].items()} == exact
        assert all(v["method"] == "exact" for v in info["exact"].values())
        for method in ("cg_uncond_linear", "cg_uncond_mlp"):
            config = yaml.safe_load((micro / "configs" / f"sample-toy1d-mu{mu:g}-{method.replace('_', '-')}.yaml")
                                    .read_text())["model"]["init_args"]
            assert config["sweep"]["cfg_scale"] == 0.0 and config["sweep"]["target"] == "guidance"
            assert [r["scale"] for r in info["methods"][method]["rows"]] == list(MICRO.toy_cg_scales)
        rows = info["methods"]["cfg"]["rows"]
        out = Path(yaml.safe_load((micro / "configs" / f"sample-toy1d-mu{mu:g}-cfg.yaml").read_text())
                   ["model"]["init_args"]["output_dir"])
        for value, paths in manifest_shards(out).items():
            traj = np.concatenate([read_extra(p, "trajectory") for p in paths], axis=1)[..., 0].astype(np.float64)
            labels = np.concatenate([read_shard(p).labels.numpy() for p in paths])
            by_hand = np.mean([np.mean(traj[:, i]) * (1 if labels[i] else -1) / mu for i in range(len(labels))])
            row = next(r for r in rows if r["scale"] == float(value))
            assert row["path_distance"]["value"] == pytest.approx(by_hand, rel=1e-9)
            assert row["path_distance"]["lo"] <= row["path_distance"]["value"] <= row["path_distance"]["hi"]
    for key in ("boundary_cg", "boundary_cg_conditional", "boundary_cfg", "fractal_wrong_class"):
        assert verdicts[key]["verdict"] in ("agree", "disagree", "inconclusive"), key
        assert verdicts[key]["effect"]["n"] > 0, key
    assert verdicts["boundary_cg"]["effect"] == toy["claims"]["cg_uncond"]
    bench = report["sections"]["fractal_benchmark"]["numbers"]
    wrong = bench["claims"]["fractal_wrong_class"]
    assert verdicts["fractal_wrong_class"]["effect"] == wrong["effect"] == wrong["parts"][0][1]
    assert "unconditional model" in wrong["parts"][0][0] and "unconditional model" in verdicts["fractal_wrong_class"][
        "measured"]
    scales = bench["methods"]["cg_uncond"]["scales"]
    first, last = min(scales, key=float), max(scales, key=float)
    point = scales[first]["wrong_class_fraction"]["value"] - scales[last]["wrong_class_fraction"]["value"]
    assert wrong["effect"]["value"] == pytest.approx(point, abs=1e-12)


def test_every_number_in_the_report_comes_from_report_json(micro):
    report = json.loads((micro / "report.json").read_text())
    md = (micro / "report.md").read_text()
    md = re.sub(r"\]\([^)]*\)", "]", md)  # link targets are paths, not figures
    allowed = json_numbers(report, set())
    shown = NUMBER.findall(md)
    assert len(shown) > 100
    missing = sorted({n for n in shown if n not in allowed})
    assert not missing, f"numbers in report.md that report.json does not hold: {missing[:20]}"


def test_rerunning_a_finished_study_changes_nothing(micro):
    before = {p: p.read_bytes() for p in (micro / "report.md", micro / "report.json")}
    code = study("--preset", "micro", "--in-process", "--runs-root", micro.parent, "--name", micro.name)
    assert code == 0
    assert {p: p.read_bytes() for p in before} == before


def test_unknown_preset_and_section_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'huge'.*micro, tiny, small, full"):
        study("--preset", "huge", "--runs-root", tmp_path)
    with pytest.raises(ValueError, match="unknown section fractl.*toy1d"):
        study("--preset", "micro", "--sections", "fractl", "--runs-root", tmp_path)
    bad = tmp_path / "study.yaml"
    bad.write_text("preset: tiny\nreport: x.md\n")
    with pytest.raises(ValueError, match="unknown key report"):
        study("--config", bad, "--runs-root", tmp_path)


@pytest.mark.parametrize("preset, path", [("full", "data/MNIST/raw"), ("full-cifar10", "data/cifar-10-batches-py")])
def test_full_without_its_data_names_the_paths(tmp_path, monkeypatch, preset, path):
    monkeypatch.chdir(tmp_path)  # no data/ here
    with pytest.raises(FileNotFoundError, match=rf"{path}[,\s]"):
        study("--preset", preset, "--runs-root", tmp_path)


def image_datamodule(config: dict) -> str | None:
    """The class path of the image dataset a step config reads: its data, or the data a wrapper holds."""
    data = config.get("data") or {}
    inner = data.get("init_args") or {}
    return (inner.get("data") or inner.get("real") or data).get("class_path")


@pytest.mark.parametrize("preset, datamodule, shape", [("full", "MNISTDataModule", [1, 28, 28]),
                                                       ("full-cifar10", "CIFAR10DataModule", [3, 32, 32])])
def test_full_presets_train_and_grade_on_their_dataset(tmp_path, capsys, preset, datamodule, shape):
    """Bug caught: a ``full`` preset that still trains or grades on the 8x8 digits (a step left unedited), or a
    dataset swap whose config the CLI rejects. Every image step that reads data reads the preset's DataModule,
    every image net is built for its shape, and the CLI parses a fit, a wrapped-data fit and predict, a test and a
    wrapped-data test."""
    import yaml

    from lightning_guidance.launch.steps import step_config
    from lightning_guidance.study.presets import get_preset
    from lightning_guidance.study.sections import plan_study

    plan = plan_study(get_preset(preset), tmp_path / "run", CONFIGS, ["digits_cfg", "digits_calibration",
                                                                       "digits_postprocessor", "ece_vs_fd"])
    to_parse = {}
    for step in plan.steps.values():
        config = step_config(step)
        if not config.get("data"):
            continue  # a sampling step: the shape comes from its checkpoint
        assert image_datamodule(config).endswith(f".{datamodule}"), step.name
        net = ((config.get("model") or {}).get("init_args") or {}).get("net")
        if step.command == "fit" and net is not None:
            assert net["init_args"]["data_shape"] == shape, step.name
        to_parse.setdefault((step.command, config["data"]["class_path"] == image_datamodule(config)), config)
    # a test on wrapped data: a guide's calibration on the held-out half (HeldOutSplit) of the dataset
    assert set(to_parse) == {("fit", True), ("fit", False), ("predict", False), ("test", True), ("test", False)}
    for (command, _), config in to_parse.items():
        path = tmp_path / "step.yaml"
        path.write_text(yaml.safe_dump(config))
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--config", str(path), "--print_config"])
        assert exit_info.value.code in (0, None)
        assert image_datamodule(yaml.safe_load(capsys.readouterr().out)).endswith(f".{datamodule}")


def test_a_failed_step_is_marked_and_the_other_sections_still_run(tmp_path, monkeypatch):
    """toy1d's trainings and the fractal classifier fail: toy1d is marked failed naming the step, the guided fractal
    samples are blocked, the fractal benchmark still reports CFG, and the exit code says something failed."""
    real_launch = StepRunner.launch

    def launch(self, step, path):
        if step.name.startswith("toy1d-") or step.name == "fractal-classifier":
            return 1
        return real_launch(self, step, path)

    monkeypatch.setattr(StepRunner, "launch", launch)
    code = study("--preset", "micro", "--in-process", "--runs-root", tmp_path, "--name", "broken",
                 "--sections", "toy1d", "fractal_benchmark")
    assert code == 1
    report = json.loads((tmp_path / "broken" / "report.json").read_text())
    toy = report["sections"]["toy1d"]
    assert toy["status"] == "failed" and "toy1d-mu1-cfg failed" in toy["reason"]
    assert f"**FAILED**: {toy['reason']}" in (tmp_path / "broken" / "report.md").read_text()
    assert report["steps"]["sample-fractal-cg"]["status"] == "blocked"
    bench = report["sections"]["fractal_benchmark"]
    assert bench["status"] == "ok" and "cfg" in bench["numbers"]["methods"] and "cg" not in bench["numbers"]["methods"]
    assert "CG of the conditional model (linear classifier)" in bench["numbers"]["methods_failed"]
    # the flows of the classifier-guided sets are blocked; the CFG one still runs
    assert bench["numbers"]["postprocessed_failed"] == ["cg_weak", "cg_large"]
    assert list(bench["numbers"]["postprocessed"]) == ["cfg"]


def test_config_edits_select_list_items_by_class_and_refuse_unknown_paths():
    config = {"trainer": {"callbacks": [{"class_path": "a.EMA", "init_args": {"decay": 0.9}},
                                        {"class_path": "b.ModelCheckpoint", "init_args": {"every_n_train_steps": 5}}]},
              "model": {"init_args": {"guidance": [{"init_args": {"scale": 1.0}}]}}}
    out = apply_edits(config, {"trainer.callbacks[ModelCheckpoint].init_args.every_n_train_steps": 7,
                               "model.init_args.guidance.0.init_args.scale": 2.0})
    assert out["trainer"]["callbacks"][1]["init_args"]["every_n_train_steps"] == 7
    assert out["model"]["init_args"]["guidance"][0]["init_args"]["scale"] == 2.0
    assert config["trainer"]["callbacks"][1]["init_args"]["every_n_train_steps"] == 5  # the input is not changed
    with pytest.raises(KeyError, match="no SampleGrid"):
        apply_edits(config, {"trainer.callbacks[SampleGrid].init_args.x": 1})


def test_a_stale_step_reruns_and_keeps_the_old_outputs(tmp_path):
    """A marker whose recorded input digest no longer matches: the step is not current, its folder is moved aside."""
    upstream = tmp_path / "up" / "last.ckpt"
    upstream.parent.mkdir()
    upstream.write_bytes(b"v1")
    home = tmp_path / "fit"
    (home / "checkpoints").mkdir(parents=True)
    (home / "checkpoints" / "last.ckpt").write_bytes(b"old")
    steps = {"up": Step("up", "s", "fit", [], product=str(upstream)),
             "down": Step("down", "s", "fit", [], {"trainer.default_root_dir": str(home)}, ["up"],
                          str(home / "checkpoints" / "last.ckpt"))}
    runner = StepRunner(tmp_path, steps)
    config = tmp_path / "down.yaml"
    config.write_text("model: {}\n")
    runner.finish(steps["down"], runner.identity(steps["down"], config), 0, 1.0)
    assert runner.is_current(steps["down"], runner.identity(steps["down"], config)) == (True, False)
    upstream.write_bytes(b"v2")  # retrained upstream
    current, stale = runner.is_current(steps["down"], runner.identity(steps["down"], config))
    assert (current, stale) == (False, True)
    runner.move_aside(steps["down"])
    kept = list(tmp_path.glob("fit.stale-*"))
    assert len(kept) == 1 and (kept[0] / "checkpoints" / "last.ckpt").read_bytes() == b"old"


def test_a_study_file_that_lists_its_own_steps_is_refused(tmp_path):
    """The study has one engine: its sections plan the steps; a study file listing ``steps:`` is refused by name."""
    chain = tmp_path / "chain.yaml"
    chain.write_text("title: mine\nsteps:\n  - {name: s, command: fit, config: configs/digits/cfg.yaml}\n")
    with pytest.raises(ValueError, match="unknown key steps; a study config takes description, jobs, name"):
        study("--config", chain)


def test_report_only_rebuilds_the_report_from_the_files_without_running_a_step(micro, tmp_path):
    import shutil

    copy = tmp_path / "micro"
    shutil.copytree(micro, copy)
    (copy / "report.md").unlink()
    (copy / "fractal" / "samples_cfg" / "manifest.json").unlink()  # as if that predict never finished
    logs = sorted((copy / "logs").iterdir())
    original = json.loads((micro / "report.json").read_text())
    code = study("--preset", "micro", "--runs-root", tmp_path, "--name", "micro", "--report-only",
                 "--sections", "fractal_benchmark", "--jobs", "1", "--threads", "2")  # not the run's settings
    assert code == 1  # a step did not finish
    assert sorted((copy / "logs").iterdir()) == logs  # nothing ran
    report = json.loads((copy / "report.json").read_text())
    # the header keeps the run's start and wall time, and says that and when it was rebuilt
    assert (report["wall_seconds"], report["started_utc"]) == (original["wall_seconds"], original["started_utc"])
    assert report["rebuilt_utc"] >= original["started_utc"] and report["rebuild_seconds"] >= 0
    header = (copy / "report.md").read_text().split("## Agreement")[0]
    assert f"wall time {fmt(original['wall_seconds'])} s" in header
    # ... and how the run ran (steps at a time, threads, machine), not the rebuild's own settings
    assert (original["jobs"], original["threads_per_step"]) == (2, 1)
    assert all(report[k] == original[k] for k in ("machine", "jobs", "threads_per_step"))
    assert "2 steps at a time, 1 thread(s) each" in header
    assert f"rebuilt from the run's files at {report['rebuilt_utc']} UTC" in header
    assert report["steps"]["sample-fractal-cg"]["seconds"] == original["steps"]["sample-fractal-cg"]["seconds"]
    bench = report["sections"]["fractal_benchmark"]
    assert report["steps"]["sample-fractal-cfg"]["status"] == "not run"
    assert bench["status"] == "ok" and "CFG" in bench["numbers"]["methods_failed"]
    assert "cg" in bench["numbers"]["methods"]
    assert "Methods whose sampling step did not finish (no rows): CFG" in (copy / "report.md").read_text()


def test_a_rebuilt_report_names_the_code_that_made_each_steps_product(micro, tmp_path):
    """A report rebuilt at a later commit must not pass its steps off as that commit's: each step marker records the
    commit that ran it, and the header lists those commits when they differ from the report's own. Bugs caught: the
    marker not recording it, a legacy marker (from before markers recorded it) attributed to the rebuilding commit
    instead of to the run that wrote the earlier report."""
    import shutil

    original = json.loads((micro / "report.json").read_text())
    assert {(s["commit"], s["dirty"]) for s in original["steps"].values()} == {(original["commit"], original["dirty"])}
    assert "Its steps' products were made at" not in (micro / "report.md").read_text()
    copy = tmp_path / "micro"
    shutil.copytree(micro, copy)
    other, legacy = "f" * 40, "fractal-classifier"
    path = copy / "steps" / "sample-fractal-cg.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "commit": other, "dirty": False}))
    path = copy / "steps" / f"{legacy}.json"
    marker = json.loads(path.read_text())
    del marker["commit"], marker["dirty"]
    path.write_text(json.dumps(marker))
    earlier = {**original, "commit": "e" * 40, "dirty": False, "steps": {**original["steps"], legacy: {"status": "done"}}}
    (copy / "report.json").write_text(json.dumps(earlier))  # the report of a run whose markers had no commit
    assert study("--preset", "micro", "--runs-root", tmp_path, "--name", "micro", "--report-only") == 0
    report = json.loads((copy / "report.json").read_text())
    assert report["steps"]["sample-fractal-cg"]["commit"] == other
    assert report["steps"][legacy]["commit"] == "e" * 40
    counts: dict[str, int] = {}
    for step in report["steps"].values():  # in step order, as the header lists them
        counts[step["commit"]] = counts.get(step["commit"], 0) + 1
    assert counts == {report["commit"]: len(report["steps"]) - 2, "e" * 40: 1, other: 1}
    dirty = " with uncommitted changes" if report["dirty"] else ""
    made = "; ".join(f"`{c}`{dirty if c == report['commit'] else ''} ({n} step{'s' * (n != 1)})"
                     for c, n in counts.items())
    assert f"Its steps' products were made at: {made}." in (copy / "report.md").read_text().split("## Agreement")[0]


def test_every_preset_field_sizes_a_declared_section():
    """Each section declares the preset fields it reads (``--list`` shows them): they exist, and no field is read
    by no section (a stale field, or a section that reads one it does not declare)."""
    from dataclasses import fields

    from lightning_guidance.study.presets import Preset
    from lightning_guidance.study.sections import SECTIONS

    declared = {f for s in SECTIONS for f in s.preset_fields}
    names = {f.name for f in fields(Preset)}
    assert declared <= names, sorted(declared - names)
    assert names - declared == {"name", "summary", "slurm", "threads_per_step"}  # the engine reads those


def test_the_step_configs_come_from_the_study_configs_folder(tmp_path, monkeypatch, capsys):
    """Outside a checkout (here: another working folder) the shipped configs are found beside the study config; when
    they cannot be found, one line says where it looked and what to pass."""
    import lightning_guidance.study.plan as plan_module
    from helpers import ROOT

    monkeypatch.chdir(tmp_path)
    assert study("--config", ROOT / "configs/digits/study.yaml", "--preset", "micro", "--sections", "toy1d",
                 "--list") == 0
    listed = [line.split()[-1] for line in capsys.readouterr().out.splitlines() if line.startswith("toy1d ")]
    assert listed and all(c.startswith(str(ROOT / "configs")) and Path(c).is_file() for c in listed)
    own = tmp_path / "mine" / "study.yaml"
    own.parent.mkdir()
    own.write_text("preset: micro\n")
    monkeypatch.setattr(plan_module, "__file__", str(tmp_path / "site-packages" / "study" / "plan.py"))
    with pytest.raises(FileNotFoundError, match=r"^the study's configs are not in .*: pass --config "
                                                r"<checkout>/configs/digits/study.yaml"):
        study("--config", own, "--list")


def test_the_report_numbers_do_not_depend_on_how_many_steps_run_at_once(micro, tmp_path):
    """One preset, the same numbers whatever --jobs: the micro run (steps one at a time, in this process) against
    a run of two sections with --jobs 2 (two worker processes side by side), both at the preset's thread count. Bug
    caught: a step whose product depends on what runs beside it or on the worker's thread settings."""
    sections = ["toy1d", "digits_cfg"]
    assert study("--preset", "micro", "--jobs", "2", "--runs-root", tmp_path, "--name", "two-jobs",
                 "--sections", *sections) == 0
    one = json.loads((micro / "report.json").read_text())
    two = json.loads((tmp_path / "two-jobs" / "report.json").read_text())
    assert (two["jobs"], one["threads_per_step"], two["threads_per_step"]) == (2, 1, 1)
    assert not any(s["status"] == "skipped" for s in two["steps"].values())  # every step ran again, in workers
    for key in sections:
        assert two["sections"][key]["numbers"] == one["sections"][key]["numbers"], key
    claims = [row for row in two["agreement"] if row["verdict"] != "not measured"]
    assert claims and all(row == next(r for r in one["agreement"] if r["key"] == row["key"]) for row in claims)
