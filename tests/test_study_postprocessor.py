"""Sections 7 (the post-processor and its controls) and 10 (sample grids) on the micro preset, in this process: every
set graded on the same ids with intervals, the controls' steps, the memorisation rows, the claims graded from
intervals, the attribution of the paper's table, and the grids of every scale."""

from __future__ import annotations

import json
import re

import pytest
from test_study import NUMBER, json_numbers, study

from lightning_guidance.study.digits import METRICS
from lightning_guidance.study.digits_postprocessor import SETS
from lightning_guidance.study.presets import MICRO


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("post")
    code = study("--config", "configs/digits/study.yaml", "--preset", "micro", "--in-process", "--runs-root", root,
                 "--name", "micro", "--sections", "digits_postprocessor", "digits_grids")
    report = json.loads((root / "micro" / "report.json").read_text())
    bad = {n: s["status"] for n, s in report["steps"].items() if s["status"] not in ("done", "skipped")}
    assert code == 0 and not bad, bad
    return root / "micro", report


def test_every_set_is_graded_on_the_same_ids_with_intervals(run):
    folder, report = run
    sec = report["sections"]["digits_postprocessor"]
    assert sec["status"] == "ok", sec["reason"]
    post = sec["numbers"]
    unseen = [f"{s:g}" for s in MICRO.flow_unseen_scales]
    per_scale = f"{MICRO.flow_per_scale:g}"
    assert post["scales"] == unseen and post["per_scale"] == per_scale
    n = 10 * MICRO.digits_samples_per_class
    for key in SETS:
        want = [per_scale] if key == "per_scale" else ["1", *unseen]
        assert list(post["sets"][key]["estimates"]) == want, key
        for s in want:
            for m in METRICS:
                e = post["sets"][key]["estimates"][s][m]
                assert e["lo"] <= e["value"] <= e["hi"] and e["n"] == n and e["seeds"] == 1, (key, s, m)
        if key != "before":
            assert list(post["vs_before"][key]) == want
    assert set(post["flow_vs"]) == {"copy", "any_class", "per_scale"} and list(post["flow_vs"]["per_scale"]) == [per_scale]
    rows = post["memorisation"]["sets"]
    assert {r["set"] for r in rows.values()} == {"before", "flow", "any_class", "per_scale"}
    # the copy's shards were graded by the same test stage, as their source
    assert report["steps"]["grade-digits-nn-copy"]["status"] == "done"
    assert (folder / "digits" / "nn-copy" / "metrics_table.json").is_file()


def test_the_claims_are_graded_from_intervals_and_the_table_is_attributed_to_cifar10(run):
    folder, report = run
    rows = {r["key"]: r for r in report["agreement"]}
    for key in ("postprocessor", "postprocessor_kd", "postprocessor_one_for_all"):
        assert rows[key]["verdict"] in ("agree", "disagree", "inconclusive"), rows[key]
        assert rows[key]["effect"]["n"] == 10 * MICRO.digits_samples_per_class and rows[key]["expected_sign"] == -1
    md = (folder / "report.md").read_text()
    section = md.split("## 7.")[1].split("\n## ")[0]
    assert "CIFAR-10" in section and "Fig. 6" in section and "same-class neighbours are our choice" in section
    assert "MNIST table" not in md and "lowers FID at every" not in md


def test_figures_and_grids_exist_for_every_scale_and_run(run):
    folder, report = run
    figures = report["sections"]["digits_postprocessor"]["figures"]
    assert figures == ["figures/digits_postprocessor.png", "figures/digits_postprocessor_effects.png",
                       "figures/digits_postprocessor_grids.png", "figures/digits_memorisation.png"]
    grids = report["sections"]["digits_grids"]
    assert grids["status"] == "ok" and grids["figures"] == ["figures/digits_grid_cfg.png"]
    for fig in [*figures, *grids["figures"]]:
        assert (folder / fig).stat().st_size > 1000


def test_every_number_of_the_sections_comes_from_report_json(run):
    folder, report = run
    md = re.sub(r"\]\([^)]*\)", "]", (folder / "report.md").read_text())
    shown = [n for part in ("## 7.", "## 10.") for n in NUMBER.findall(md.split(part)[1].split("\n## ")[0])]
    missing = sorted(set(shown) - json_numbers(report, set()))
    assert len(shown) > 50 and not missing, missing
