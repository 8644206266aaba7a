"""Section 6: calibration and regularised guidance on digits, mirroring the calibration paper: the noisy classifier
before and after the Smooth-ECE fine-tune, with a lambda = 0 control (the same fine-tune without the calibration
term), each used for guidance; tilted, entropy-adaptive and every f-divergence guidance side by side."""

from __future__ import annotations

import json

from . import digits
from .digits import NOISE
from .digits_cg import run_of
from .section import Claim, Products, Section, SectionResult, fmt, md_table, numbers_of

#: the fine-tunes of the noisy classifier: step -> (label, weight of the Smooth-ECE term)
FINE_TUNES = {"digits-calibrated": ("Smooth-ECE fine-tune", 1.0),
              "digits-calibrated-lambda0": ("lambda = 0 control", 0.0)}


def plan(plan) -> None:
    p = plan.preset
    digits.plan_base(plan)
    digits.plan_classifiers(plan)
    for key, (_, weight) in FINE_TUNES.items():
        plan.fit(key, "digits/calibrate.yaml", key.replace("digits-", "digits/"), None,
                 {**digits.image_edits(p, "calibrate"), "trainer.max_epochs": p.calibration_epochs,
                  "model.init_args.checkpoint": plan.product("digits-classifier"),
                  "trainer.check_val_every_n_epoch": p.calibration_epochs, "model.init_args.smooth_ece_weight": weight},
                 needs=["digits-classifier"], product="checkpoints/calibrated_classifier.ckpt")
    for r in digits.of_section(p, "digits_calibration"):
        digits.plan_run(plan, r)


def analyse(products: Products, res: SectionResult) -> None:
    from ..io.figures import pyplot

    p, tables = products.preset, digits.read_tables(products)
    want = digits.of_section(p, "digits_calibration")
    have = [r for r in want if r.key in tables]
    cal = {}
    for key in FINE_TUNES:
        if products.ok(key):
            info = json.loads((products.step(key).out_dir.parent / "metrics_table.json").read_text())
            if info.get("before") and info.get("after"):
                cal[key] = info
    if not have and not cal:
        raise LookupError(products.failed_inputs([r.grade for r in want] + list(cal)))
    res.numbers = {"fine_tune": cal, "runs": {r.key: {"label": r.label, **tables[r.key]} for r in have}}
    blocks = []
    if cal:
        first = next(iter(cal.values()))
        names = [k for k in ("accuracy", "ece", "smooth_ece") if k in first.get("before", {})]
        rows = [["original", *(fmt(first["before"][k]) for k in names)]]
        rows += [[label, *(fmt(cal[key]["after"][k]) for k in names)] for key, (label, _) in FINE_TUNES.items()
                 if key in cal]
        blocks += ["The noisy classifier on held-out images (ece: integral over its time buckets):", "",
                   *md_table(["classifier", *names], rows)]
    guided = [r for r in [digits.runs(p)["cg-noisy"], *have] if r.key in tables]
    rows = []
    for r in guided:
        s, v = digits.best(tables[r.key], exclude_zero=True)
        rows.append([r.label, fmt(s), fmt(v), fmt(tables[r.key]["scales"][f"{s:g}"]["judge_accuracy"])])
    blocks += ["Best guided scale of each run:", "", *md_table(["run", "best scale", "fd_digits", "judge accuracy"],
                                                               rows)]
    if guided:
        fig, ax = pyplot().subplots(figsize=(5, 3.2))
        for r in guided:
            t = tables[r.key]["scales"]
            ax.plot([float(s) for s in t], [m["fd_digits"] for m in t.values()], "o-", label=r.label, ms=3)
        ax.set_xlabel("guidance scale", fontsize=8), ax.set_ylabel("fd_digits", fontsize=8)
        ax.legend(fontsize=6)
        res.figure(fig, "digits_calibration_guidance.png", "digits: guidance with the original, calibrated and "
                                                           "lambda = 0 classifiers, and the regularised variants")
    res.markdown = [*blocks, *res.markdown, *digits.run_table(guided, tables)]


# ---- claims ---------------------------------------------------------------------------------------------------------
def c_lowers_ece(n):
    ft = numbers_of(n, "digits_calibration")["fine_tune"]
    cal, ctl = ft["digits-calibrated"], ft.get("digits-calibrated-lambda0")
    text = f"ECE {fmt(cal['before']['ece'])} → {fmt(cal['after']['ece'])} (Smooth-ECE fine-tune)"
    agree = cal["after"]["ece"] < cal["before"]["ece"]
    if ctl:
        text += f", {fmt(ctl['after']['ece'])} with lambda = 0"
        agree &= cal["after"]["ece"] <= ctl["after"]["ece"]
    return text, agree


def c_calibrated_guidance(n):
    runs = numbers_of(n, "digits_calibration")["runs"]
    cal, orig = digits.best_guided(runs["cg-calibrated"]), digits.best_guided(run_of(n, "digits_cg", "cg-noisy"))
    text = f"best guided fd_digits: calibrated {fmt(cal)}, original {fmt(orig)}"
    if "cg-lambda0" in runs:
        text += f", lambda = 0 control {fmt(digits.best_guided(runs['cg-lambda0']))}"
    return text, cal < orig


def c_js_best(n):
    runs = numbers_of(n, "digits_calibration")["runs"]
    divs = {k.split("-", 1)[1]: digits.best_guided(r) for k, r in runs.items() if k.startswith("divergence-")}
    if len(divs) < 2:
        raise LookupError("fewer than two f-divergences ran")
    best = min(divs, key=divs.get)
    return "best guided fd_digits: " + ", ".join(f"{k} {fmt(v)}" for k, v in divs.items()), best == "js"


def c_regularised(n):
    runs = numbers_of(n, "digits_calibration")["runs"]
    plain = digits.best_guided(run_of(n, "digits_cg", "cg-clean"))
    reg = {k: digits.best_guided(runs[k]) for k in ("tilted", "entropy") if k in runs}
    if not reg:
        raise LookupError("tilted / entropy did not run")
    return (f"best guided fd_digits: plain {fmt(plain)}, " + ", ".join(f"{k} {fmt(v)}" for k, v in reg.items()),
            min(reg.values()) < plain)


PAPER = "Javid et al. (calibration)"
SECTION = Section(
    "digits_calibration", "6. Digits, calibration and regularised guidance", digits.DATA,
    (*digits.SIZES, "digits_classifier_steps", "digits_clean_steps", "cg_scales", "ablation_scale",
     "calibration_epochs", "divergences"), plan, analyse, claims=(
        Claim("calibration_ece", PAPER, "Smooth-ECE fine-tuning lowers the classifier's ECE",
              "ECE falls, and more than with lambda = 0", c_lowers_ece, "few fine-tuning epochs on a small held-out "
              "split"),
        Claim("calibrated_guidance", PAPER, "guidance with the calibrated classifier gives a better FID than with the "
              "original", "calibrated < original", c_calibrated_guidance, NOISE),
        Claim("js_best", PAPER, "Jensen-Shannon is the best f-divergence for guidance",
              "JS lowest FID among the divergences", c_js_best, NOISE),
        Claim("regularised", PAPER, "regularised (tilted / entropy) guidance beats plain guidance with the same "
              "classifier", "regularised < plain", c_regularised, NOISE)))
