"""The study's verdict API: estimates with intervals, claim rows graded from constructed numbers, the training-seed
plumbing of the plan, the threads rule, and the shared figure helpers.

Oracles: the verdict rule and sample-size formula of ``stats`` (tested against textbook cases in test_stats.py) on
intervals built here by hand; the plan's step names and config edits; matplotlib's own record of what was drawn.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import CONFIGS

from lightning_guidance.stats import Estimate, difference
from lightning_guidance.stats.claims import Claim, Measurement, agreement, agreement_markdown, verdict_counts


def est(value, lo, hi, se=None, n=100, seeds=3):
    return Estimate(value, lo, hi, n, seeds, "seed_t", se if se is not None else (hi - lo) / 3.92)


@pytest.mark.parametrize("lo, hi, sign, verdict", [(0.1, 0.5, 1, "agree"), (-0.5, -0.1, 1, "disagree"),
                                                   (-0.1, 0.5, 1, "inconclusive"), (-0.5, -0.1, -1, "agree"),
                                                   (0.1, 0.5, -1, "disagree"), (-0.5, 0.1, -1, "inconclusive")])
def test_claim_rows_read_the_verdict_from_the_interval(lo, hi, sign, verdict):
    """Constructed effects: the row's verdict is the interval's side of 0 against the paper's sign; the effect size
    and the needed n are the stats formulas on the estimate's noise; the likely reason shows only on disagreement."""
    e = est((lo + hi) / 2, lo, hi)
    claim = Claim("k", "Paper", "a claim", "up", lambda n: Measurement("measured", e, sign), "the reason")
    [row] = agreement([claim], {})
    assert row["verdict"] == verdict
    assert row["effect"] == e.as_json() and Estimate.from_json(row["effect"]) == e
    assert row["effect_size"] == pytest.approx(e.value / (e.se * math.sqrt(e.n)))
    z = 1.959964 + 0.841621
    assert row["samples_needed"] == math.ceil(e.n * (z * e.se / abs(e.value)) ** 2)
    assert (row["likely_reason"] == "the reason") == (verdict == "disagree")
    md = "\n".join(agreement_markdown([row]))
    assert e.text() in md and f"| {verdict} |" in md and "100 × 3" in md


def test_claims_not_measured_say_why_and_reconstructions_are_marked():
    def missing(numbers):
        raise LookupError("section x was not run")

    claims = [Claim("a", "P", "measured later", "up", missing, "r"),
              Claim("b", "P", "out of scope", "up", None, "r", not_measured="needs ImageNet"),
              Claim("c", "P", "tilted guidance helps", "down", lambda n: Measurement("m", est(-2, -3, -1), -1), "r",
                    reconstruction=True)]
    rows = agreement(claims, {})
    assert [r["verdict"] for r in rows] == ["not measured", "not measured", "agree"]
    assert rows[0]["measured"] == "not measured: section x was not run"
    assert rows[1]["measured"] == "not measured: needs ImageNet"
    md = "\n".join(agreement_markdown(rows))
    assert "tilted guidance helps †" in md and "† the method is our reconstruction" in md
    assert verdict_counts(rows) == {"agree": 1, "disagree": 0, "inconclusive": 0, "not measured": 2,
                                    "no interval": 0}
    assert "Verdicts: 1 agree, 0 disagree, 0 inconclusive, 2 not measured." in md


def test_estimates_round_trip_and_print_their_interval():
    e = Estimate(0.1234567, 0.101, 0.145, 200, 3, "seed_t", 0.011)
    assert Estimate.from_json(json.loads(json.dumps(e.as_json()))) == e
    assert e.text() == "0.1235 [0.101, 0.145]"
    assert Estimate.exact(2.5).text() == "2.5" and Estimate.exact(2.5).grade(1)["verdict"] == "agree"
    with pytest.raises(ValueError, match="unknown estimate method"):
        Estimate(1, 0, 2, 10, 1, "guess")
    d = difference(Estimate(3.0, 2, 4, 100, 1, "bootstrap", 0.3), Estimate(1.0, 0, 2, 100, 1, "bootstrap", 0.4))
    assert d.value == 2.0 and d.se == pytest.approx(0.5) and d.lo == pytest.approx(2 - 1.959964 * 0.5)


def test_a_preset_with_two_training_seeds_plans_seeded_models_and_runs(tmp_path):
    """Each model a claim rests on is fitted once per seed (seed 0 keeps its name and config, seed s offsets the
    config's seed_everything and noise_seed by s, never the data split); each run samples and grades per seed from
    that seed's models; the judge is fitted once."""
    from lightning_guidance.launch.steps import step_config
    from lightning_guidance.study.presets import MICRO
    from lightning_guidance.study.sections import plan_study

    one = plan_study(MICRO, tmp_path / "run", CONFIGS, ["digits_cfg", "digits_cg"])
    two = plan_study(replace(MICRO, training_seeds=(0, 1)), tmp_path / "run", CONFIGS, ["digits_cfg", "digits_cg"])
    assert set(one.steps) < set(two.steps)
    for name in one.steps:  # seed 0: the same steps with the same configs
        assert step_config(one.steps[name]) == step_config(two.steps[name]), name
    extra = set(two.steps) - set(one.steps)
    assert extra == {f"{n}-s1" for n in one.steps if n not in ("digits-judge", "digits-judge-conv")}  # instruments
    for model, config in (("digits-cfg", "cfg"), ("digits-classifier", "classifier"),
                          ("digits-clean", "clean_classifier")):
        base, seeded = step_config(two.steps[model]), step_config(two.steps[f"{model}-s1"])
        assert seeded["seed_everything"] == base["seed_everything"] + 1
        assert seeded["model"]["init_args"]["noise_seed"] == base["model"]["init_args"]["noise_seed"] + 1
        assert seeded["data"] == base["data"]  # the same train/held-out split
        assert seeded["trainer"]["default_root_dir"].endswith(f"digits/{config}-s1")
    sample = step_config(two.steps["sample-digits-cg-clean-s1"])["model"]["init_args"]
    assert sample["checkpoint"] == two.steps["digits-cfg-s1"].product
    assert sample["sweep"]["terms"][0]["init_args"]["classifier"]["init_args"]["checkpoint"] == \
        two.steps["digits-clean-s1"].product
    assert sample["seed"] == step_config(two.steps["sample-digits-cg-clean"])["model"]["init_args"]["seed"]
    assert set(two.steps["grade-digits-cg-clean-s1"].needs) >= {"digits-judge", "sample-digits-cg-clean-s1"}


def test_another_thread_count_is_refused_in_one_line_unless_allowed(tmp_path):
    from lightning_guidance.cli import main
    from lightning_guidance.study.command import check_threads
    from lightning_guidance.study.presets import MICRO

    with pytest.raises(ValueError, match=r"^--threads 2: the micro preset runs 1 thread\(s\) per step.*"
                                         r"--allow-other-threads") as err:
        main(["study", "--preset", "micro", "--threads", "2", "--runs-root", str(tmp_path), "--list"])
    assert "\n" not in str(err.value)
    assert check_threads(MICRO, None, False) == 1 and check_threads(MICRO, 1, False) == 1
    assert check_threads(MICRO, 2, True) == 2


def test_the_report_header_names_a_run_at_another_thread_count():
    from lightning_guidance.study.report import other_threads

    report = {"preset": {"threads_per_step": 1}, "threads_per_step": 1}
    assert other_threads(report) == ""
    assert "A different run" in other_threads({**report, "threads_per_step": 2})


def test_figure_helpers_draw_distinct_styles_bands_and_a_legend_off_the_data(tmp_path):
    from lightning_guidance.io.figures import (axis_labels, fit_axis, legend_outside, plot_with_band, pyplot,
                                               save_figure, style)

    styles = [style(i) for i in range(20)]
    assert len({s["color"] for s in styles}) == 20
    assert all(styles[i] != styles[i + 1] for i in range(19))
    assert all(styles[i]["marker"] != styles[i + 1]["marker"] and styles[i]["linestyle"] != styles[i + 1]["linestyle"]
               for i in range(19))
    fig, (ax, other) = pyplot().subplots(1, 2)
    x = [1.0, 1.5, 2.0, 3.0]
    line = plot_with_band(ax, x, [Estimate(v, v - 0.1, v + 0.2, 10) for v in (1.0, 0.8, 0.9, 1.2)], "a", 0)
    plot_with_band(ax, x, [{"value": 2.0, "lo": 1.5, "hi": 2.5}] * 4, "b", 1)
    assert line.get_color() == style(0)["color"] and len(ax.collections) == 2  # two bands
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(0.7) and band[:, 1].max() == pytest.approx(1.4)
    axis_labels(ax, "CFG scale s", "fd_digits")
    legend = legend_outside(ax)
    assert legend.get_bbox_to_anchor().x0 > ax.get_window_extent().x1 - 1  # anchored right of the axes
    values = [1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 0.98, 1.01, 0.99, 1.03, 50.0]
    other.plot(values)
    other.set_ylabel("fd")
    assert fit_axis(other, values) == "clipped" and other.get_ylim()[1] < 50 and "off the axis" in other.get_ylabel()
    decades = np.geomspace(1e-3, 1e3, 20)
    assert fit_axis(other, decades) == "symlog" and other.get_yscale() == "symlog"
    assert fit_axis(other, [1.0, 1.1, 1.2, 1.3]) == "linear"
    path = save_figure(fig, tmp_path / "f.png")
    assert Path(path).stat().st_size > 1000


def graded_run(root: Path, seeds: int, n: int, shift: dict[str, float], rng) -> list[Path]:
    """A graded CFG run as the test stage leaves it: per seed a metrics_table.json and the per-sample products of
    each scale (judge features: N(shift, 1) in 8 dimensions; logits favouring the label) and of the real set."""
    from lightning_guidance.io.sample_products import products_path, write_sample_products

    tables = []
    for s in range(seeds):
        folder = root / f"seed{s}"
        rows = []
        for scale, mu in shift.items():
            ids = np.arange(n)
            labels = ids % 10
            logits = rng.normal(size=(n, 10)) + 3 * np.eye(10)[labels]
            write_sample_products(products_path(folder, f"cfg_{scale}"), {"ids": ids, "labels": labels, "logits": logits,
                                  "features": rng.normal(mu, 1, size=(n, 8))}, {})
            rows.append({"value": float(scale), "metrics": {"fd_digits": 0.0, "judge_accuracy": 0.0}})
        real_labels = np.arange(60) % 10
        write_sample_products(products_path(folder, "real"), {"ids": np.arange(60), "labels": real_labels,
                              "logits": 3 * np.eye(10)[real_labels], "features": rng.normal(0, 1, size=(60, 8))}, {})
        table = {"fd_name": "fd_digits", "num_samples_per_value": n, "target": "cfg", "rows": rows,
                 "real": {"judge_accuracy": 1.0}, "settings": {"fd_name": "fd_digits", "k": 3, "kd_subsets": 10,
                                                              "kd_subset_size": 50, "kd_seed": 0}}
        (folder / "metrics_table.json").write_text(json.dumps(table))
        tables.append(folder / "metrics_table.json")
    return tables


def test_estimates_and_paired_contrasts_of_a_graded_run(tmp_path):
    """Constructed products: one seed gives a symmetric (normal bootstrap) interval around the value; two seeds the
    seed_t interval; a run compared with itself has the effect 0 exactly (paired: same ids drawn for both); a shift of
    the features away from the real set is a positive fd difference whose interval excludes 0; two runs of different
    sizes are compared on the ids they share."""
    from lightning_guidance.metrics.graded import Graded, contrast, estimate
    from lightning_guidance.metrics.products import quality_from_products

    rng = np.random.default_rng(0)
    one = Graded.read(graded_run(tmp_path / "one", 1, 40, {"1": 0.0, "2": 1.5}, rng))
    e = estimate(one, "1", "judge_accuracy")
    assert (e.seeds, e.n, e.method) == (1, 40, "bootstrap")
    assert e.value - e.lo == pytest.approx(e.hi - e.value) and e.lo < e.value < e.hi
    exact = quality_from_products(one.products("2")[0], one.real()[0], metrics=["fd_digits"], fd_name="fd_digits")
    assert estimate(one, "2", "fd_digits").value == pytest.approx(exact["fd_digits"])
    same = contrast({"a": (one, "1"), "b": (one, "1")}, "fd_digits", lambda v: v["a"] - v["b"])
    assert (same.value, same.lo, same.hi) == (0.0, 0.0, 0.0)
    shifted = contrast({"far": (one, "2"), "near": (one, "1")}, "fd_digits", lambda v: v["far"] - v["near"])
    assert shifted.lo > 0 and shifted.grade(+1)["verdict"] == "agree"
    two = Graded.read(graded_run(tmp_path / "two", 2, 20, {"1": 0.0, "2": 1.5}, rng))
    e2 = estimate(two, "1", "judge_accuracy")
    assert (e2.seeds, e2.method) == (2, "seed_t")
    both = contrast({"a": (one, "2"), "b": (two, "1")}, "fd_digits", lambda v: v["a"] - v["b"])
    assert (both.n, both.seeds) == (20, 1)  # the ids 0..19 both have, on the seeds both have


def test_a_u_shape_is_chosen_on_one_half_of_the_ids_and_measured_on_the_other(tmp_path):
    """``metrics.graded.u_shape``: a sweep far from the real set at s = 1 and at its largest scale and near it in
    between is U-shaped (both ends worse than the best interior scale, on the half of the ids it was not chosen on); a
    sweep that keeps improving is not. ``metrics.best_of_sweep.fd_against``: a scale against the same set is 0
    exactly (paired), a shifted scale is worse."""
    from lightning_guidance.metrics.best_of_sweep import fd_against
    from lightning_guidance.metrics.graded import Graded, half_ids, u_shape

    rng = np.random.default_rng(0)
    u = Graded.read(graded_run(tmp_path / "u", 1, 40, {"1": 1.5, "1.5": 0.0, "2": 1.5}, rng))
    got = u_shape(u, ["1", "1.5", "2"])
    assert got["best_scale"] == 1.5 and got["u_depth"]["lo"] > 0
    assert got["u_depth"]["n"] == len(half_ids(40, 1)) == 20
    falling = Graded.read(graded_run(tmp_path / "falling", 1, 40, {"1": 1.5, "1.5": 0.8, "2": 0.0}, rng))
    assert u_shape(falling, ["1", "1.5", "2"])["u_depth"]["hi"] < 0
    vs = fd_against(u, u.products("1.5"))
    assert (vs["1.5"].value, vs["1.5"].lo, vs["1.5"].hi) == (0.0, 0.0, 0.0) and vs["2"].lo > 0
