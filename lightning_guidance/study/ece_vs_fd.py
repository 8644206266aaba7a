"""Section 8: the integral ECE of a guide against the quality of the samples it guides, over distinct guides of one
kind: the noisy classifier on x_t, at many calibration levels from temperature scaling of one classifier (training
seed 0, each temperature also used for guidance), plus the original, Smooth-ECE fine-tuned and lambda = 0 classifiers
of every training seed.

A guide's ECE is read on held-out images that no fine-tune saw (section 6's calibration steps; a temperature T divides
the same logits by T, exactly what ``TrainedClassifier(temperature=T)`` computes), its fd_digits best against best
over the guidance scale (section 5's helpers); Spearman's rho over the guides with a bootstrap interval over guides.
"""

from __future__ import annotations

from . import digits, digits_calibration, digits_cg
from .digits_calibration import CLASSIFIERS, guide_logits
from .digits_cg import RESAMPLES
from ..io.tables import fmt, md_table
from ..launch.products import Products
from ..stats.claims import Claim, stored_effect
from .section import Section, SectionResult
from ..stats import Estimate, text

#: the guided run of each noisy guide of section 6 (the temperatures' runs are ``cg-T<t>``)
GUIDED = {"digits-classifier": "cg-noisy", "digits-calibrated": "cg-calibrated",
          "digits-calibrated-lambda0": "cg-lambda0"}
KINDS = ("original", "temperature", "Smooth-ECE fine-tune", "lambda = 0 control")


def plan(plan) -> None:
    digits_cg.plan(plan)
    digits_calibration.plan(plan)
    for r in digits.of_section(plan.preset, "ece_vs_fd"):
        digits.plan_run(plan, r)


def guides(products: Products) -> list[dict]:
    """Every distinct noisy guide whose calibration step and guided run finished: its kind, training seed,
    temperature, integral ECE (bootstrap over held-out images) and best fd_digits (bootstrap over sample ids)."""
    from ..metrics.calibration_intervals import calibration_interval

    p, runs = products.preset, digits.runs(products.preset)
    wanted = [(c, s, 1.0, GUIDED[c]) for s in p.training_seeds for c in CLASSIFIERS]
    wanted += [("digits-classifier", 0, t, f"cg-T{t:g}") for t in p.temperatures]
    out = []
    for classifier, seed, t, key in wanted:
        try:
            logits = guide_logits(products, classifier, [seed])[0]
            best = digits_cg.best_of(products, runs[key], resamples=RESAMPLES, seed=seed)
        except LookupError:
            continue
        kind = "temperature" if t != 1.0 else CLASSIFIERS[classifier]
        ece = calibration_interval([(logits, None)], "ece", (t, 1.0), num_resamples=RESAMPLES)
        out.append({"label": f"{kind}, seed {seed}" + (f", T = {t:g}" if t != 1.0 else ""), "kind": kind,
                    "seed": seed, "temperature": t, "run": key,
                    "ece": Estimate.from_interval(ece, len(logits["labels"])).as_json(), "fd_digits": best["effect"],
                    "chosen": best["chosen"][0]["a"], "edge": best["edge"]})
    return out


def analyse(products: Products, res: SectionResult) -> None:
    from ..stats.correlation import spearman_interval

    p = products.preset
    points = guides(products)
    if len(points) < 3:
        raise LookupError(f"{len(points)} noisy guides finished; a rank correlation needs 3")
    xs, ys = [g["ece"]["value"] for g in points], [g["fd_digits"]["value"] for g in points]
    rho = spearman_interval(xs, ys)
    res.numbers = {"guides": points, "spearman_rho": Estimate.from_interval(rho, len(points),
                                                                              len(p.training_seeds)).as_json(),
                   "distinct_guides": len(points), "time_points": p.ece_time_points,
                   "temperatures": list(p.temperatures)}
    figure(res, points)
    res.markdown = [
        f"{fmt(len(points))} distinct guides, all the noisy classifier on x_t: temperature scaling of training seed "
        f"0's classifier (T ∈ {{{', '.join(fmt(t) for t in p.temperatures)}}}, each also used for guidance), and the "
        "original, Smooth-ECE fine-tuned and lambda = 0 classifiers of each training seed. Integral ECE: on "
        f"{fmt(points[0]['ece']['n'])} held-out images that no fine-tune saw, noised to the centres of "
        f"{fmt(p.ece_time_points)} time buckets (the calibration section's steps), [95 %] over images. fd_digits: "
        + digits_cg.SELECTION
        + ", paired with the seed's unguided samples (< 0: better), [95 %] over sample ids (* a chosen scale at an end "
        f"of the grid). Spearman's rho over the guides = {text(res.numbers['spearman_rho'])} "
        "[95 % bootstrap over guides].", "", *res.markdown,
        *md_table(["guide", "integral ECE [95 %]", "best fd_digits − unguided [95 %]", "chosen scales"],
                  [[g["label"], *(text(g[k]) for k in ("ece", "fd_digits")),
                    " / ".join(fmt(c) for c in g["chosen"]) + (" *" if g["edge"] else "")] for g in points])]


def figure(res: SectionResult, points: list[dict]) -> None:
    from ..io.figures import interval_scatter

    groups = {kind: [(g["ece"], g["fd_digits"], f"T={g['temperature']:g}" if kind == "temperature" else "")
                     for g in points if g["kind"] == kind] for kind in KINDS}
    fig = interval_scatter({k: v for k, v in groups.items() if v},
                           "integral ECE of the guide on held-out x_t (lower: better calibrated)",
                           "best fd_digits − unguided, paired (lower is better)",
                           "one point per distinct guide, 95 % error bars")
    res.figure(fig, "ece_vs_fd.png", "integral ECE of each distinct noisy guide against the best fd_digits it guides "
                                     "to (95 % intervals: images for ECE, sample ids for fd_digits)")


c_ece_fd = stored_effect("ece_vs_fd", ("spearman_rho",), lambda s, rho: f"Spearman rho(integral ECE, best fd_digits) "
                         f"= {rho.text()} over {fmt(s['distinct_guides'])} distinct guides (bootstrap over guides)",
                         +1, "Spearman rho")


SECTION = Section(
    "ece_vs_fd", "8. Integral ECE vs fd_digits across distinct guides", digits.DATA,
    ("ece_time_points", "ece_samples", "temperatures", "cg_scales"), plan, analyse, claims=(
        Claim("ece_fd", "Ma et al. / Javid et al.", "lower integral ECE goes with lower FID",
              "positive rank correlation over guides", c_ece_fd,
              "the guides differ in more than calibration: a temperature also rescales the guidance gradient"),))
