"""Section 4: classifier-free guidance on digits: the scale sweep of Ho & Salimans (a 0.1 grid over s in [1, 2], where
the paper's best lies, then coarse to 6), every figure with its 95 % interval over sample ids and training seeds.

The U-shape is judged without selection bias (``metrics.graded.u_shape``): the best interior scale is chosen on one
half of the sample ids, its differences to s = 1 and to the largest scale are measured, paired, on the other half.
"""

from __future__ import annotations

from . import digits
from ..metrics.graded import Graded, contrast, table_markdown, table_of, u_shape
from .plan import seeded
from ..io.tables import fmt
from ..launch.products import Products
from ..stats.claims import Claim, stored_effect
from .section import Section, SectionResult
from ..stats import text

PAPER = "Ho & Salimans (CFG)"
SECOND_JUDGE, BY = "digits-judge-conv", "conv"  # configs/digits/judge_conv.yaml: a LeNet-like convnet
SECOND_METRICS = ("fd_digits", "kd_digits", "judge_accuracy", "judge_score")


def plan(plan) -> None:
    """The shared models and CFG's sweep, and a second judge of another architecture grading the same shards."""
    p = plan.preset
    digits.plan_base(plan)
    plan.fit(SECOND_JUDGE, "digits/judge_conv.yaml", "digits/judge_conv", p.digits_judge_steps,
             digits.image_edits(p, "fit"))
    for seed in p.training_seeds:
        plan.grade(plan.steps[seeded(digits.runs(p)["cfg"].sample, seed)], SECOND_JUDGE,
                   digits.image_edits(p, "grade"), by=BY)


def judged(g: Graded, scales: list[str], metrics: tuple[str, ...] = digits.METRICS) -> dict:
    """What one judge's grading of the sweep shows: its table, the U-shape, and the gain in judge score from s = 1 to
    the largest scale (paired)."""
    return {"table": table_of(g, metrics), "u_shape": u_shape(g, scales), "judge_score_gain": contrast(
        {"high": (g, scales[-1]), "low": (g, "1")}, "judge_score", lambda v: v["high"] - v["low"]).as_json()}


def figure(res: SectionResult, t: dict, second: dict) -> None:
    """One panel per figure of the first judge, then the second judge's fd_digits and kd_digits: the 95 % band and
    the real-vs-real floor at the same n."""
    from ..io.figures import axis_labels, fit_axis, legend_outside, plot_with_band, pyplot

    scales = list(t["scales"])
    x = [float(s) for s in scales]
    panels = [(t, m, m) for m in digits.METRICS] + [(second, m, f"{m}, second judge") for m in digits.METRICS[:2]]
    fig, axes = pyplot().subplots(2, 4, figsize=(12, 5.2))
    for ax, (table, m, ylabel) in zip(axes.flat, panels):
        est = [table["estimates"][s][m] for s in scales]
        plot_with_band(ax, x, est, "CFG, 95 % band over ids and seeds", 0)
        floor = table.get("real_floor", {}).get("metrics", {}).get(m)
        if floor is not None:
            ax.axhline(floor, color="0.3", lw=0.8, ls=":", label="real vs real at the same n")
        axis_labels(ax, "CFG scale s (1 = conditional)", ylabel)
        fit_axis(ax, [v for e in est for v in (e["value"], e["lo"], e["hi"])])
    legend_outside(fig)
    res.figure(fig, "digits_cfg_sweep.png", "digits: CFG scale sweep, 95 % bands over sample ids and training seeds "
                                            "(dotted: the real-vs-real floor at the same n)")


def analyse(products: Products, res: SectionResult) -> None:
    p = products.preset
    cfg = digits.runs(p)["cfg"]
    if not all(products.ok(n) for n in cfg.grades(p)):
        raise LookupError(products.failed_inputs(cfg.grades(p)))
    g = digits.graded(products, cfg)
    scales = list(g.tables[0]["scales"])
    first, second = judged(g, scales), judged(digits.graded(products, cfg, by=BY), scales, SECOND_METRICS)
    t, u, u2 = first["table"], first["u_shape"], second["u_shape"]
    res.numbers = {**first, "samples_per_scale": t["num_samples"], "seeds": t["seeds"],
                   "ddim_steps": p.digits_ddim_steps,
                   "second_judge": {"judge": "LeNet-like convnet (configs/digits/judge_conv.yaml)", **second}}
    figure(res, t, second["table"])
    floor = t.get("real_floor", {})
    res.markdown = [
        f"DDIM with {fmt(p.digits_ddim_steps)} steps, {fmt(t['num_samples'])} samples per scale and training seed, "
        f"{fmt(t['seeds'])} training seed(s) of the CFG model (one judge). Every figure: its value [95 % interval] "
        "over sample ids (and over training seeds, then ids, where there are several). `kd_digits` is the kernel "
        "distance (KID's unbiased estimator) in the judge's features; `judge_score` the judge's Inception-Score "
        f"analogue. The judge on real held-out images: accuracy {fmt(t['real'].get('judge_accuracy'))}, score "
        f"{fmt(t['real'].get('judge_score'))}; real vs real at n = {fmt(floor.get('num_samples'))}: "
        + ", ".join(f"{k} {fmt(v)}" for k, v in floor.get("metrics", {}).items() if not k.endswith("_std")) + ".", "",
        f"U-shape without selection bias: the best interior scale chosen on half of the sample ids is "
        f"s = {fmt(u['best_scale'])}; on the other half, fd(s = 1) − fd(best) = {text(u['low_minus_best'])} and "
        f"fd(s = {fmt(u['high_scale'])}) − fd(best) = {text(u['high_minus_best'])}.", "",
        f"The second judge (a LeNet-like convnet, another architecture and seed) on the same shards: best interior "
        f"s = {fmt(u2['best_scale'])}, smaller of the two fd differences {text(u2['u_depth'])} (first judge: "
        f"{text(u['u_depth'])}); judge score gain from s = 1 to s = {fmt(u['high_scale'])} "
        f"{text(second['judge_score_gain'])} (first judge: {text(first['judge_score_gain'])}).", "",
        *res.markdown, *table_markdown({cfg.label: t}, "CFG scale s"), "Graded by the second judge:", "",
        *table_markdown({cfg.label: second["table"]}, "CFG scale s", SECOND_METRICS)]


def u_shape_words(s: dict, _) -> str:
    u, u2 = s["u_shape"], s["second_judge"]["u_shape"]
    return (f"best interior s = {fmt(u['best_scale'])} (chosen on half the ids); on the other half "
            f"fd(s = 1) − fd(best) {text(u['low_minus_best'])}, fd(s = {fmt(u['high_scale'])}) − fd(best) "
            f"{text(u['high_minus_best'])}; second judge: the smaller of the two {text(u2['u_depth'])}")


def fidelity_words(s: dict, _) -> str:
    t = s["table"]["estimates"]
    low, high = "1", list(t)[-1]
    return (f"judge score {text(t[low]['judge_score'])} at s = 1 → {text(t[high]['judge_score'])} at s = {high}; "
            f"second judge: gain {text(s['second_judge']['judge_score_gain'])}")


c_u_shape = stored_effect("digits_cfg", ("u_shape", "u_depth"), u_shape_words, +1,
                          "the smaller of the two fd_digits differences")
c_fidelity = stored_effect("digits_cfg", ("judge_score_gain",), fidelity_words, +1, "judge_score difference")


SECTION = Section(
    "digits_cfg", "4. Digits, classifier-free guidance: a fine scale sweep", digits.DATA,
    (*digits.SIZES, "cfg_fine_scales", "cfg_samples_per_class"), plan, analyse, claims=(
        Claim("cfg_u_shape", PAPER, "FID is U-shaped in the guidance scale (best at w = 0.1-0.3, s = 1.1-1.3)",
              "a moderate scale beats both no guidance (s = 1) and strong guidance", c_u_shape,
              "briefly trained model on 8x8 digits: guidance may only help or only hurt over the swept range"),
        Claim("cfg_fidelity", PAPER, "class fidelity (Inception Score) rises with the scale",
              "IS at the largest scale > IS at s = 1 (here: the judge's IS analogue, judge_score)", c_fidelity,
              "the judge's score saturates near its value on real images")))
