"""Sections 5, 6 and 8 (classifier guidance, calibration, ECE vs fd_digits) end to end on the micro preset, in this
process, and what is new in them checked against numbers recomputed here from the steps' own products: the
temperature runs and their calibration, the best scale chosen on one half of the sample ids and graded on the other,
and the rank correlation over distinct guides. The numbers mean nothing (micro models); their provenance does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from lightning_guidance.cli import main
from lightning_guidance.io.sample_products import products_path, read_sample_products
from lightning_guidance.metrics.best_of_sweep import halves, rows
from lightning_guidance.metrics.products import quality_from_products
from lightning_guidance.metrics.calibration_intervals import integral_ece_of_logits, read_guide_logits
from lightning_guidance.study.presets import MICRO
from lightning_guidance.study.sections import CLAIMS

SECTIONS = ("digits_cg", "digits_calibration", "ece_vs_fd")
#: a second micro study of its own (135 s of fixture with -n 0 on the loaded 2-core machine): slow. The default run
#: keeps these sections' end-to-end run in tests/test_study.py's micro study and their statistics' unit tests in
#: tests/test_best_of_sweep.py
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    try:
        main(["study", "--config", "configs/digits/study.yaml", "--preset", "micro", "--in-process", "--runs-root",
              str(root), "--name", "micro", "--sections", *SECTIONS])
    except SystemExit as exit_:
        assert not exit_.code, f"micro study exited {exit_.code} (logs: {root / 'micro' / 'logs'})"
    return root / "micro"


@pytest.fixture(scope="module")
def report(micro) -> dict:
    return json.loads((micro / "report.json").read_text())


def numbers(report: dict, key: str) -> dict:
    sec = report["sections"][key]
    assert sec["status"] == "ok", sec["reason"]
    return sec["numbers"]


def test_every_claim_is_graded_from_an_interval(report, micro):
    for key in SECTIONS:
        assert report["sections"][key]["figures"] and all((micro / f).stat().st_size > 1000
                                                         for f in report["sections"][key]["figures"])
    mine = {c.key for c in CLAIMS if c.paper.startswith(("Ma et al.", "Javid et al."))}
    rows = [r for r in report["agreement"] if r["key"] in mine]
    assert {r["key"] for r in rows} == mine
    for r in rows:
        assert r["verdict"] in ("agree", "disagree", "inconclusive", "not measured"), r
        if r["verdict"] != "not measured":
            e = r["effect"]
            assert e["lo"] <= e["value"] <= e["hi"] and e["n"] > 0 and e["seeds"] == len(MICRO.training_seeds), r
    reconstructed = {r["key"] for r in rows if r["reconstruction"]}
    assert reconstructed == {"js_best", "tilted", "entropy"}


def test_the_temperature_runs_exist_and_their_eces_differ(report, micro):
    """One guided run per temperature of the preset; each guide's ECE is the step's logits divided by T, read here
    again from guide_logits.npz; no two guides share an ECE."""
    guides = numbers(report, "ece_vs_fd")["guides"]
    tempered = [g for g in guides if g["kind"] == "temperature"]
    assert sorted(g["temperature"] for g in tempered) == sorted(MICRO.temperatures)
    assert all(report["steps"][f"grade-digits-cg-T{t:g}"]["status"] == "done" for t in MICRO.temperatures)
    logits = read_guide_logits(micro / "digits" / "ece" / "digits-classifier" / "guide_logits.npz")
    for g in guides:
        if g["kind"] in ("temperature", "original"):
            assert g["ece"]["value"] == pytest.approx(integral_ece_of_logits(logits, g["temperature"]), abs=1e-9)
    eces = [g["ece"]["value"] for g in guides]
    assert len(set(eces)) == len(eces), eces


def test_best_against_best_is_chosen_on_one_half_and_graded_on_the_other(report, micro):
    """tau2/tau1 = 1 against 0.5: for each half of the sample ids, each run's scale is the one with the lower
    fd_digits on the other half, and the reported effect is the mean over halves of the difference on the half itself
    (recomputed here with the unbatched Fréchet distance)."""
    entry = numbers(report, "digits_cg")["compare"]["tau"]
    folders = [micro / "digits" / f"samples_ots-tau{t}-gamma0.3" / "sample_products" for t in ("1", "0.5")]
    real = read_sample_products(folders[0] / "real.npz")
    sets = [{s: read_sample_products(f / f"guidance_{s:g}.npz") for s in (1.0, 2.0)} for f in folders]
    parts = halves(sets[0][1.0]["labels"])

    def fd(run: int, scale: float, half: int) -> float:
        return quality_from_products(rows(sets[run][scale], parts[half]), real, fd_name="fd_digits",
                                     metrics=["fd_digits"])["fd_digits"]

    chosen = entry["chosen"][0]
    for half in (0, 1):
        for run, name in enumerate(("a", "b")):
            assert chosen[name][half] == min((1.0, 2.0), key=lambda s: fd(run, s, 1 - half))
    want = np.mean([fd(0, chosen["a"][h], h) - fd(1, chosen["b"][h], h) for h in (0, 1)])
    assert entry["effect"]["value"] == pytest.approx(want, rel=1e-6, abs=1e-9)


def test_the_correlation_interval_is_over_distinct_guides(report):
    s = numbers(report, "ece_vs_fd")
    guides = s["guides"]
    assert s["distinct_guides"] == len(guides) == len({(g["kind"], g["seed"], g["temperature"]) for g in guides})
    assert len(guides) == 3 * len(MICRO.training_seeds) + len(MICRO.temperatures)
    rho = s["spearman_rho"]
    xs, ys = [g["ece"]["value"] for g in guides], [g["fd_digits"]["value"] for g in guides]
    want = scipy.stats.spearmanr(xs, ys)[0] if len(set(ys)) > 1 else 0.0
    assert rho["value"] == pytest.approx(want) and rho["n"] == len(guides) and rho["lo"] <= rho["hi"]
