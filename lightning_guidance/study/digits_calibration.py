"""Section 6: calibration and regularised guidance on digits, mirroring the calibration paper: the noisy classifier
before and after the Smooth-ECE fine-tune, with a lambda = 0 control (the same fine-tune without the calibration
term), for every training seed; each used for guidance; tilted, entropy-adaptive and every f-divergence guidance side
by side, each against plain guidance with the same classifier.

The calibration figures are read on held-out images that neither the classifier nor its fine-tune saw (the
evaluation half of the split the fine-tune trains on the other half of), from each guide's logits per time bucket
(``metrics.calibration_intervals``); guidance is compared best against best (section 5's helpers). The tilted,
entropy and divergence forms are our reconstruction from the paper's abstract.
"""

from __future__ import annotations

from . import digits, digits_cg
from .digits import SMALL_DATA
from .digits_cg import CLAIM_RESAMPLES, TABLE_NOTE, compare_table, comparisons, figure, runs_table, section_runs
from ..launch.steps import Step, step_config
from .plan import seeded
from ..io.tables import fmt, md_table
from ..launch.products import Products
from ..stats.claims import Claim, numbers_of, stored_effect
from .section import Section, SectionResult
from ..stats import Estimate, text

#: the fine-tunes of the noisy classifier: step -> (label, weight of the Smooth-ECE term)
FINE_TUNES = {"digits-calibrated": ("Smooth-ECE fine-tune", 1.0),
              "digits-calibrated-lambda0": ("lambda = 0 control", 0.0)}
CLASSIFIERS = {"digits-classifier": "original", **{k: v for k, (v, _) in FINE_TUNES.items()}}
ECE_BINS = 10
RECONSTRUCTED = "tilted, entropy-adaptive and divergence guidance: our reconstruction from the paper's abstract"


# ---- planning: the fine-tunes, their guided runs, and each noisy guide's calibration ----------------------------
def ece_step(classifier: str, seed: int) -> str:
    """The step that reads the guide ``classifier`` (a fit step of seed 0) of training seed ``seed`` on x_t."""
    return f"ece-{seeded(classifier, seed)}"


def plan_ece(plan, classifier: str, seed: int) -> None:
    """The calibration of the noisy guide ``classifier`` of ``seed`` on what it reads (x_t), on held-out images: a
    ``test`` of configs/digits/guide_calibration.yaml with the term of a CG run (``guide_logits.npz``)."""
    p = plan.preset
    sample = plan.steps[seeded(digits.runs(p)["cg-noisy"].sample, seed)]
    term = step_config(sample)["model"]["init_args"]["sweep"]["terms"][0]  # the CG run's term, with its own guide
    term["init_args"]["classifier"]["init_args"]["checkpoint"] = plan.product(seeded(classifier, seed))
    name = ece_step(classifier, seed)
    out = plan.dir("digits", "ece", name.removeprefix("ece-"))
    edits = {"trainer.default_root_dir": out, "trainer.accelerator": p.accelerator,
             "trainer.enable_progress_bar": False, "model.init_args.output_dir": out,
             "model.init_args.checkpoint": plan.product(seeded("digits-cfg", seed)), "model.init_args.term": term,
             "model.init_args.num_buckets": p.ece_time_points, "model.init_args.n_bins": ECE_BINS,
             "model.init_args.num_samples": p.ece_samples, **digits.image_edits(p, "calibrate")}
    plan.add(Step(name, plan.section, "test", [plan.config("digits/guide_calibration.yaml")], edits,
                  [seeded("digits-cfg", seed), seeded(classifier, seed)], f"{out}/guide_calibration.json"))


def plan(plan) -> None:
    p = plan.preset
    digits.plan_base(plan)
    digits.plan_classifiers(plan)
    for seed in p.training_seeds:
        for key, (_, weight) in FINE_TUNES.items():
            plan.fit(key, "digits/calibrate.yaml", key.replace("digits-", "digits/"), None,
                     {**digits.image_edits(p, "calibrate"), "trainer.max_epochs": p.calibration_epochs,
                      "model.init_args.checkpoint": plan.product(seeded("digits-classifier", seed)),
                      "trainer.check_val_every_n_epoch": p.calibration_epochs,
                      "model.init_args.smooth_ece_weight": weight},
                     needs=[seeded("digits-classifier", seed)], product="checkpoints/calibrated_classifier.ckpt",
                     seed=seed)
    for r in digits.of_section(p, "digits_calibration"):
        digits.plan_run(plan, r)
    for seed in p.training_seeds:
        for classifier in CLASSIFIERS:
            plan_ece(plan, classifier, seed)


# ---- reading ----------------------------------------------------------------------------------------------------
def guide_logits(products: Products, classifier: str, seeds) -> list[dict]:
    """Per training seed, the held-out logits of the noisy guide ``classifier``."""
    from ..metrics.calibration_intervals import read_guide_logits

    return [read_guide_logits(products.step(ece_step(classifier, s)).out_dir / "guide_logits.npz") for s in seeds]


def calibration(products: Products) -> dict:
    """Accuracy and integral ECE of each noisy guide on held-out images, over images and training seeds, and the
    paired ECE differences of the fine-tune against the original and against the lambda = 0 control."""
    from ..metrics.calibration_intervals import calibration_interval

    seeds = products.preset.training_seeds
    logits = {c: guide_logits(products, c, seeds) for c in CLASSIFIERS}
    n = len(logits["digits-classifier"][0]["labels"])

    def est(per_seed, kind="ece") -> dict:
        return Estimate.from_interval(calibration_interval(per_seed, kind, num_resamples=CLAIM_RESAMPLES), n,
                                      len(seeds)).as_json()

    cal = logits["digits-calibrated"]
    return {"guides": {CLASSIFIERS[c]: {f: est([(x, None) for x in logits[c]], f) for f in ("acc", "ece")}
                       for c in CLASSIFIERS},
            "original_minus_calibrated": est(list(zip(logits["digits-classifier"], cal))),
            "lambda0_minus_calibrated": est(list(zip(logits["digits-calibrated-lambda0"], cal))),
            "images": n, "time_buckets": products.preset.ece_time_points, "bins": ECE_BINS}


def pairs(divs) -> dict:
    """The comparisons of the divergences ``divs`` (section 5's ``comparisons``: the effect is fd_digits of the first
    named − of the second, best against best): the fine-tune against the original and the control; each regularised
    method against plain guidance on its own; JS against each other divergence and against the best of them."""
    others = [d for d in divs if d != "js"]
    return {"calibrated": ("cg-noisy", "cg-calibrated", "fd_digits original − Smooth-ECE fine-tuned classifier"),
            "calibrated_control": ("cg-lambda0", "cg-calibrated",
                                   "fd_digits lambda = 0 control − Smooth-ECE fine-tuned"),
            "tilted": ("cg-clean", "tilted", "fd_digits plain − tilted (clean classifier)"),
            "entropy": ("cg-clean", "entropy", "fd_digits plain − entropy-adaptive (clean classifier)"),
            **{f"plain_vs_{d}": ("cg-clean", f"divergence-{d}", f"fd_digits plain − {d}") for d in divs},
            **{f"{d}_vs_js": (f"divergence-{d}", "divergence-js", f"fd_digits {d} − js") for d in others},
            "others_vs_js": ([f"divergence-{d}" for d in others], "divergence-js",
                             "fd_digits best other f-divergence − JS")}


def analyse(products: Products, res: SectionResult) -> None:
    p = products.preset
    want = digits.of_section(p, "digits_calibration")
    runs = section_runs(products, [r.key for r in want])
    try:
        cal = calibration(products)
    except LookupError:
        cal = None
    if not runs and cal is None:
        raise LookupError(products.failed_inputs([g for r in want for g in r.grades(p)]))
    divs = [d for d in p.divergences if f"divergence-{d}" in runs]
    compared_pairs = pairs(divs)
    compare = comparisons(products, compared_pairs, claimed=("calibrated", "tilted", "entropy", "others_vs_js"))
    res.numbers = {"calibration": cal, "runs": runs, "compare": compare, "reconstruction": RECONSTRUCTED,
                   "divergences": list(p.divergences)}
    if cal:
        g = cal["guides"]
        res.markdown += [
            f"The noisy classifier on {fmt(cal['images'])} held-out images (the fine-tune trains on the other half of "
            f"the classifier's validation split), noised to the centres of {fmt(cal['time_buckets'])} time buckets: "
            f"accuracy and integral ECE ({fmt(ECE_BINS)} bins), mean over buckets, [95 %] over images and training "
            "seeds:", "", *md_table(["classifier", "accuracy", "integral ECE"],
                                    [[k, text(v["acc"]), text(v["ece"])] for k, v in g.items()]),
            f"ECE original − fine-tuned: {text(cal['original_minus_calibrated'])}; lambda = 0 control − "
            f"fine-tuned: {text(cal['lambda0_minus_calibrated'])} (paired: the same images and noise).", ""]
    if runs:
        res.markdown += [TABLE_NOTE + " " + RECONSTRUCTED + ".", "", *runs_table(runs)]
    if compare:
        res.markdown += compare_table(compare, compared_pairs)
    figure(res, {**runs, **section_runs(products, ["cg-noisy", "cg-clean"])},
           [("noisy classifier: original, calibrated, control", ["cg-noisy", "cg-calibrated", "cg-lambda0"]),
            ("clean classifier: plain and regularised",
             ["cg-clean", "tilted", "entropy", *(f"divergence-{d}" for d in divs)])],
           "digits_calibration_guidance.png", "digits: fd_digits against the guidance scale, paired with the "
           "unguided samples (95 % bands over sample ids and training seeds), with the original, Smooth-ECE "
           "fine-tuned and lambda = 0 classifiers, and plain vs regularised guidance with the clean classifier")


# ---- claims -----------------------------------------------------------------------------------------------------
def c_lowers_ece(control: bool):
    key = "lambda0_minus_calibrated" if control else "original_minus_calibrated"
    other = "lambda = 0 control" if control else "original"

    def words(s: dict, _) -> str:
        g = s["calibration"]["guides"]
        return (f"integral ECE on held-out images: {other} {text(g[other]['ece'])}, "
                f"fine-tuned {text(g['Smooth-ECE fine-tune']['ece'])}")
    return stored_effect("digits_calibration", ("calibration", key), words, +1, "integral ECE difference",
                         "the calibration steps did not finish")


def compared(key: str):
    return digits_cg.compared("digits_calibration", key, pairs(()))


def js_best(numbers: dict):
    """JS against the best other f-divergence; a preset that guides with JS alone does not pose the question."""
    planned = numbers_of(numbers, "digits_calibration")["divergences"]
    if len(planned) < 2:
        raise LookupError(f"this preset guides with {', '.join(planned)} only (its divergences); the small preset "
                          "compares the f-divergences")
    return compared("others_vs_js")(numbers)


PAPER = "Javid et al. (calibration)"
SECTION = Section(
    "digits_calibration", "6. Digits, calibration and regularised guidance", digits.DATA,
    (*digits.SIZES, "digits_classifier_steps", "digits_clean_steps", "cg_scales", "calibration_epochs",
     "divergences", "ece_time_points", "ece_samples"), plan, analyse, claims=(
        Claim("calibration_ece", PAPER, "Smooth-ECE fine-tuning lowers the classifier's ECE",
              "ECE falls (held-out images)", c_lowers_ece(False), "few fine-tuning epochs on a small held-out split"),
        Claim("calibration_ece_control", PAPER, "the Smooth-ECE term, not fine-tuning alone, lowers the ECE",
              "ECE below the same fine-tune with lambda = 0", c_lowers_ece(True),
              "few fine-tuning epochs on a small held-out split"),
        Claim("calibrated_guidance", PAPER, "guidance with the calibrated classifier gives a better FID than with the "
              "original", "calibrated better than original (best vs best)", compared("calibrated"), SMALL_DATA),
        Claim("js_best", PAPER, "Jensen-Shannon is the best f-divergence for guidance",
              "JS better than the best other divergence (best vs best)", js_best, SMALL_DATA,
              reconstruction=True),
        Claim("tilted", PAPER, "tilted guidance beats plain guidance with the same classifier",
              "tilted better than plain (best vs best)", compared("tilted"), SMALL_DATA, reconstruction=True),
        Claim("entropy", PAPER, "entropy-adaptive guidance beats plain guidance with the same classifier",
              "entropy-adaptive better than plain (best vs best)", compared("entropy"), SMALL_DATA,
              reconstruction=True)))
