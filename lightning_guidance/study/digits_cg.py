"""Section 5: classifier guidance on digits, posed as EluCD's tables: the noisy classifier on ``x_t`` against the clean
(off-the-shelf) classifier on ``x0_hat``; the ablations of tau2/tau1 and of the sine boost gamma (defined against
EluCD's own setting, linear schedule with 250 DDPM steps); CFG + classifier against CFG alone.

Every method sweeps the guidance scale and is compared best against best (:data:`SELECTION`,
``metrics.best_of_sweep``), paired on the same sample ids and training seeds. The helpers here serve sections 6 and 8.
"""

from __future__ import annotations

from . import digits
from ..metrics.graded import Graded
from .digits import REFERENCE, SMALL_DATA, Run, offtheshelf_key
from .plan import seeded
from ..io.tables import fmt, md_table
from ..launch.products import Products
from ..stats.claims import Claim, stored_effect
from .section import Section, SectionResult
from ..stats import Estimate, text

RESAMPLES, CLAIM_RESAMPLES = 200, 500  # resamples of a table figure, of a claim's effect (the intervals read their SE)
#: the Softplus betas of EluCD's smoothness ablation, and why it is not run here
SOFTPLUS_BETAS = (8.0, 5.0, 3.0)
SOFTPLUS_NOT_RUN = ("every digits classifier of the suite uses SiLU, which has no ReLU for the Softplus swap to "
                    "replace, so this ablation is not run")
SELECTION = ("best against best: each method's best scale is chosen on one half of the sample ids (half of each "
             "class) and its fd_digits read on the other half, both ways, averaged; the interval holds the choice "
             "fixed")
TABLE_NOTE = ("Every figure is read against a reference set sampled with the same ids, per-sample seeds and "
              "training seed, paired (< 0: better than it): the unguided samples (CFG runs: CFG at s = 1); "
              "[95 %] over sample ids and training seeds. Best: " + SELECTION + "; shown: the scales chosen on "
              "seed 0 for the two halves, * where one lies at an end of the grid (the optimum may lie outside it).")


def plan(plan) -> None:
    digits.plan_base(plan)
    digits.plan_classifiers(plan)
    for r in digits.of_section(plan.preset, "digits_cg"):
        digits.plan_run(plan, r)


# ---- best against best (sections 5, 6 and 8) --------------------------------------------------------------------
def guided(scale: str) -> bool:
    return float(scale) > 0


def reference(products: Products, r: Run) -> tuple[Run, str]:
    """The set a run's figures are read against, paired (same sample ids, per-sample seeds and training seed): the
    run's own (``Run.reference``), else the unguided DDPM samples (the plain clean-classifier run at scale 0), or for a
    DDIM CFG run the conditional model (CFG at s = 1). Differences cancel what the two sets share, the Fréchet
    distance's small-n bias included."""
    runs = digits.runs(products.preset)
    key, scale = r.reference or (("cg-clean", "0") if r.ddpm else ("cfg", "1"))
    return runs[key], scale


def best_of(products: Products, a: Run | list[Run], b: Run | None = None, keep=(guided, guided),
            resamples: int = CLAIM_RESAMPLES, seed: int | None = None) -> dict:
    """``metrics.best_of_sweep.best_against_best`` of run ``a`` (or of the runs ``a``: their best run and scale)
    against ``b`` over the scales ``keep`` accepts (``b`` None: against ``a``'s reference set); ``seed``: on that
    training seed alone."""
    from ..metrics.best_of_sweep import best_against_best

    def read(r: Run) -> Graded:
        if seed is None:
            return digits.graded(products, r)
        return Graded.read([products.step(seeded(r.grade, seed)).product])

    if b is None:
        b, scale = reference(products, a)
        keep = (keep[0], lambda s: s == scale)
    several = isinstance(a, list)
    return best_against_best([(r.key, read(r)) for r in (a if several else [a])], read(b), *keep, keyed=several,
                             num_resamples=resamples)


def run_numbers(products: Products, r: Run) -> dict:
    """A run's fd_digits per scale (``scales``: means over seeds) and, paired against its reference set, the
    difference at each scale and at its best scale (once per report)."""
    from ..metrics.best_of_sweep import fd_against

    if ("run_numbers", r.key) in products.memo:
        return products.memo["run_numbers", r.key]
    g, (ref_run, ref_scale) = digits.graded(products, r), reference(products, r)
    ref = digits.graded(products, ref_run).products(ref_scale)
    vs = {s: e.as_json() for s, e in fd_against(g, ref, RESAMPLES).items()}
    out = {"label": r.label, "seeds": g.seeds, "vs_reference": vs, "reference": f"{ref_run.label} at {ref_scale}",
           "scales": {s: {"fd_digits": sum(t["scales"][s]["fd_digits"] for t in g.tables) / g.seeds} for s in vs},
           "best": best_of(products, r, resamples=RESAMPLES)}
    products.memo["run_numbers", r.key] = out
    return out


def section_runs(products: Products, keys) -> dict:
    """:func:`run_numbers` of each run in ``keys`` whose steps finished."""
    all_runs, out = digits.runs(products.preset), {}
    for k in keys:
        try:
            out[k] = run_numbers(products, all_runs[k])
        except (KeyError, LookupError):
            pass
    return out


def comparisons(products: Products, pairs: dict, claimed=()) -> dict:
    """``{name: best_of(a, b, keep)}`` of ``pairs = {name: (a key or keys, b key, the effect in words[, keep])}`` whose
    runs finished (a claim's with more resamples; the best of no runs is no comparison)."""
    runs, out = digits.runs(products.preset), {}
    for name, (a, b, _, *keep) in pairs.items():
        try:
            a_run = [runs[k] for k in a] if isinstance(a, list) else runs[a]
            if a_run:
                out[name] = best_of(products, a_run, runs[b], *(keep or [(guided, guided)]),
                                    resamples=CLAIM_RESAMPLES if name in claimed else RESAMPLES)
        except (KeyError, LookupError):
            pass
    return out


def runs_table(runs: dict) -> list[str]:
    def best(entry: dict) -> str:
        chosen = entry["chosen"][0]["a"]
        return f"{text(entry['effect'])} at {' / '.join(fmt(s) for s in chosen)}" + (" *" if entry["edge"] else "")

    return md_table(["run", "scales", "best: fd_digits − reference [95 %] at the chosen scales"],
                    [[v["label"], ", ".join(v["scales"]), best(v["best"])] for v in runs.values()])


def compare_table(compare: dict, pairs: dict) -> list[str]:
    rows = [[pairs[k][2], text(v["effect"])] for k, v in compare.items()]
    return ["Comparisons, paired on the same sample ids and training seeds, best against best (> 0: the second named "
            "is better):", "", *md_table(["comparison", "difference [95 %]"], rows)]


def figure(res: SectionResult, runs: dict, panels: list[tuple[str, list[str]]], name: str, caption: str,
           xlabel: str = "guidance scale", reference_name: str = "unguided") -> None:
    """One panel per ``(title, keys)``: each of those ``runs``' paired difference to its reference set, with 95 %
    bands."""
    from ..io.figures import band_panels

    curves = [(title, [(runs[k]["label"], list(map(float, runs[k]["vs_reference"])),
                        list(runs[k]["vs_reference"].values())) for k in keys if k in runs]) for title, keys in panels]
    curves = [c for c in curves if c[1]]
    if curves:
        res.figure(band_panels(curves, xlabel, f"fd_digits − fd_digits({reference_name}), paired"), name, caption)


def compared(section: str, key: str, pairs: dict):
    """A claim measured by the paired comparison ``pairs[key]`` of ``section``'s numbers (the paper predicts it > 0)."""
    what = pairs[key][2]

    def words(s: dict, effect: Estimate) -> str:
        edge = "; a best scale lies at an end of its grid" if s["compare"][key]["edge"] else ""
        return f"best vs best, {what} = {effect.text()}{edge}"
    return stored_effect(section, ("compare", key, "effect"), words, +1, "fd_digits difference",
                         f"the runs of {what} did not finish")


# ---- section 5 --------------------------------------------------------------------------------------------------
def sine_boost(products: Products) -> tuple[dict, dict]:
    """Per gamma, the sine boost's factor per DDPM step as our runs apply it (defined against EluCD's linear schedule
    with 250 steps), as the paper's formula would on our schedule, and in EluCD's own setting; and per gamma and
    setting, the median, 90th percentile and largest factor over the steps."""
    import numpy as np

    from ..guidance.schedules import sine_boost_settings

    schedule, train = (products.config_value("digits-cfg", f"model.init_args.{k}")
                       for k in ("schedule", "num_train_steps"))
    boost = {f"{g:g}": sine_boost_settings(schedule, train, products.preset.digits_ddpm_steps, g)
             for g in products.preset.sine_gammas if g > 0}
    return boost, {g: {name: {"median": float(np.median(f)), "p90": float(np.quantile(f, 0.9)), "max": float(max(f))}
                          for name, f in settings.items()} for g, settings in boost.items()}


RT, RG = REFERENCE["tau2"], REFERENCE["gamma"]
#: the claims' comparisons: name -> (run a, run b, the effect in words[, scales of each]); the effect is
#: fd(a's best) - fd(b's best)
PAIRS = {"clean_vs_noisy": ("cg-noisy", "cg-clean", "fd_digits noisy on x_t − clean on x0_hat"),
         "guidance_helps": ("cg-clean", "cg-clean", "fd_digits unguided − clean classifier guidance",
                            (lambda s: float(s) == 0, guided)),
         "tau": (offtheshelf_key(1.0, RG), offtheshelf_key(RT, RG), f"fd_digits tau2/tau1 = 1 − tau2/tau1 = {RT:g}"),
         "gamma": (offtheshelf_key(RT, 0.0), offtheshelf_key(RT, RG), f"fd_digits gamma = 0 − gamma = {RG:g}"),
         "cfg_plus_cg": ("cfg-ddpm", "cfg-plus-cg", "fd_digits CFG alone − CFG + classifier")}


def analyse(products: Products, res: SectionResult) -> None:
    p = products.preset
    want = digits.of_section(p, "digits_cg")
    runs = section_runs(products, [r.key for r in want])
    if not runs:
        raise LookupError(products.failed_inputs([g for r in want for g in r.grades(p)]))
    compare, (boost, summary) = comparisons(products, PAIRS, claimed=PAIRS), sine_boost(products)
    res.numbers = {"runs": runs, "compare": compare, "sine_boost": boost, "sine_summary": summary,
                   "ddpm_steps": p.digits_ddpm_steps,
                   "reference": REFERENCE, "selection": SELECTION, "softplus_betas": list(SOFTPLUS_BETAS),
                   "softplus_beta": SOFTPLUS_NOT_RUN}
    res.markdown = [f"DDPM with {fmt(p.digits_ddpm_steps)} steps (CFG + classifier and CFG alone too, as EluCD samples "
                    f"DiT), {fmt(p.digits_samples_per_class * 10)} samples per scale and "
                    f"training seed, {fmt(next(iter(runs.values()))['seeds'])} training seed(s) of the diffusion model "
                    "and of each classifier. " + TABLE_NOTE, "", *runs_table(runs),
                    *(compare_table(compare, PAIRS) if compare else []),
                    "The sine boost multiplies g per DDPM step by the factors below; our runs define gamma against "
                    "EluCD's setting (linear schedule, 250 DDPM steps) at the same noise level:", "",
                    *md_table(["setting", "gamma", "median factor", "90th percentile", "max"],
                              [[name, g, *(fmt(v) for v in q.values())]
                               for g, per in summary.items() for name, q in per.items()]),
                    f"Softplus beta ∈ {{ReLU, {', '.join(fmt(b) for b in SOFTPLUS_BETAS)}}}: {SOFTPLUS_NOT_RUN}.", ""]
    missing = [r.label for r in want if r.key not in runs]
    if missing:
        res.markdown += [f"Runs whose steps failed (no rows): {', '.join(missing)}.", ""]
    ots = [k for k in runs if k.startswith("ots-")]
    tau, gamma = [k for k in ots if k.endswith(f"gamma{RG:g}")], [k for k in ots if k.startswith(f"ots-tau{RT:g}-")]
    figure(res, runs, [("noisy vs clean classifier", ["cg-noisy", "cg-clean"]), (f"tau2/tau1 (gamma = {fmt(RG)})", tau),
                       (f"sine boost gamma (tau2/tau1 = {fmt(RT)})", gamma)],
           "digits_cg_sweeps.png", "digits: fd_digits against the guidance scale, paired with the unguided samples "
           "(95 % bands over sample ids and training seeds): noisy vs clean classifier, and EluCD's ablations")
    if "cfg_plus_cg" in compare:
        figure(res, runs, [("CFG + classifier vs CFG", ["cfg-ddpm", "cfg-plus-cg"])],
               "digits_cfg_plus_cg.png", "digits: CFG alone and CFG + the clean classifier against the CFG scale s, "
               "paired with CFG at s = 1 (95 % bands)", "CFG scale s (1 = conditional)", "CFG s = 1")
    if f"{RG:g}" in boost:
        from ..io.figures import lines_figure

        res.figure(lines_figure(boost[f"{RG:g}"], "sampling progress (step / steps; 0 = pure noise)",
                                "boost factor of g (log)", f"sine boost per DDPM step, gamma = {RG:g}", log=True),
                   "digits_sine_boost.png", f"the sine boost's factor per DDPM step at gamma = {RG:g}: as our runs "
                   "apply it, as the paper's formula would on our schedule, and in EluCD's setting")


PAPER = "Ma et al. (EluCD)"
SECTION = Section(
    "digits_cg", "5. Digits, classifier guidance mirroring EluCD's tables", digits.DATA,
    (*digits.SIZES, "digits_classifier_steps", "digits_clean_steps", "cg_scales", "tau_ratios", "sine_gammas",
     "cfg_plus_cg_scales"), plan, analyse, claims=(
        Claim("clean_vs_noisy", PAPER, "an off-the-shelf clean classifier on x0_hat guides as well as a noisy "
              "classifier", "clean ≤ noisy in FID (best vs best)", compared("digits_cg", "clean_vs_noisy", PAIRS),
              SMALL_DATA),
        Claim("guidance_helps", PAPER, "off-the-shelf guidance improves over the unguided model",
              "guided FID < unguided FID (best scale)", compared("digits_cg", "guidance_helps", PAIRS), SMALL_DATA),
        Claim("tau", PAPER, "lowering tau2/tau1 below 1 improves FID (best near .5)",
              "tau2/tau1 = 0.5 better than 1 (best vs best)", compared("digits_cg", "tau", PAIRS), SMALL_DATA),
        Claim("sine_gamma", PAPER, "a sine-boosted schedule (gamma > 0) improves FID (best near .3)",
              "gamma = 0.3 better than 0 (best vs best)", compared("digits_cg", "gamma", PAIRS), SMALL_DATA),
        Claim("softplus", PAPER, "Softplus smoothing of ReLU lowers FID (beta 3 best)", "smaller beta is better", None,
              "", not_measured=SOFTPLUS_NOT_RUN),
        Claim("cfg_plus_cg", PAPER, "adding an off-the-shelf classifier to CFG improves FID",
              "CFG + CG better than CFG (best vs best over s)", compared("digits_cg", "cfg_plus_cg", PAIRS),
              SMALL_DATA)))
