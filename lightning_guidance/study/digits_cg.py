"""Section 5: classifier guidance on digits, posed as EluCD's tables: the noisy classifier on ``x_t`` against the clean
(off-the-shelf) classifier on ``x0_hat``; the ablations of tau2/tau1 and of the sine boost gamma (defined against
EluCD's own setting, linear schedule with 250 DDPM steps); CFG + classifier against CFG alone.

Every method sweeps the guidance scale and is compared best against best: each method's best scale is chosen on one
half of the sample ids and its fd_digits read on the other half, both ways, averaged (``metrics.best_of_sweep``);
two methods are compared paired, on the same sample ids and training seeds. The helpers here serve sections 6 and 8.
"""

from __future__ import annotations

from . import digits
from .digits import REFERENCE, SMALL_DATA, Run, offtheshelf_key
from .section import Claim, Measurement, Products, Section, SectionResult, fmt, md_table, numbers_of
from ..stats import Estimate

RESAMPLES, CLAIM_RESAMPLES = 200, 500  # resamples of a table figure, of a claim's effect (the intervals read their SE)
#: the Softplus betas of EluCD's smoothness ablation, and why it is not run here
SOFTPLUS_BETAS = (8.0, 5.0, 3.0)
SOFTPLUS_NOT_RUN = ("every digits classifier of the suite uses SiLU, which has no ReLU for the Softplus swap to "
                    "replace, so this ablation is not run")
SELECTION = ("best against best: each method's best scale is chosen on one half of the sample ids (half of each "
             "class) and its fd_digits read on the other half, both ways, averaged; the interval holds the choice "
             "fixed")


def plan(plan) -> None:
    digits.plan_base(plan)
    digits.plan_classifiers(plan)
    for r in digits.of_section(plan.preset, "digits_cg"):
        digits.plan_run(plan, r)


# ---- best against best (sections 5, 6 and 8) --------------------------------------------------------------------
def guided(scale: str) -> bool:
    return float(scale) > 0


def graded(products: Products, r: Run) -> digits.Graded:
    """The run's grading, read once per report (its per-sample products stay cached with it)."""
    key = ("graded", r.key)
    if key not in products.memo:
        products.memo[key] = digits.graded(products, r)
    return products.memo[key]


def sweeps(products: Products, r: Run, keep=guided, ids=None) -> list:
    """Per training seed, the run's :class:`~..metrics.best_of_sweep.Sweep` over the scales ``keep`` accepts (default:
    the guided ones, above 0), on the sample ids ``ids`` (default: all)."""
    from ..metrics.best_of_sweep import Sweep
    from ..metrics.intervals import keep_ids

    g = graded(products, r)
    scales = [s for s in g.tables[0]["scales"] if keep(s)]
    pick = (lambda p: p) if ids is None else (lambda p: keep_ids(p, ids))
    return [Sweep({float(s): pick(g.products(s)[k]) for s in scales}, g.real()[k], g.settings)
            for k in range(g.seeds)]


def reference(products: Products, r: Run) -> tuple[Run, str]:
    """The set a run's figures are read against, paired (same sample ids, per-sample seeds and training seed): the
    unguided DDPM samples (the plain clean-classifier run at scale 0), or for a DDIM CFG run the conditional model
    (CFG at s = 1). Differences cancel what the two sets share, the Fréchet distance's small-n bias included."""
    return (digits.runs(products.preset)["cg-clean"], "0") if r.ddpm else (digits.runs(products.preset)["cfg"], "1")


def best_of(products: Products, a: Run, b: Run | None = None, keep=(guided, guided),
            resamples: int = CLAIM_RESAMPLES) -> dict:
    """``fd(a at its best) - fd(b at its best)`` over the scales ``keep`` accepts (``b`` None: against ``a``'s
    reference set), on the sample ids and training seeds the two share: ``{"effect": Estimate, "chosen": [per seed
    {"a": (scale graded on half 0, on half 1), "b": ...}], "edge": a chosen scale at an end of its grid}``."""
    from ..metrics.best_of_sweep import crossfit

    if b is None:
        b, scale = reference(products, a)
        keep = (keep[0], lambda s: s == scale)
    first = [graded(products, r) for r in (a, b)]  # the ids both sampled (the CFG sweep samples more per class)
    ids = sorted(set.intersection(*(set(g.products(next(iter(g.tables[0]["scales"])))[0]["ids"].tolist())
                                    for g in first)))
    sa, sb = sweeps(products, a, keep[0], ids), sweeps(products, b, keep[1], ids)
    seeds = min(len(sa), len(sb))  # a run of fewer seeds has the first ones
    fit = crossfit(list(zip(sa[:seeds], sb[:seeds])), num_resamples=resamples)
    ends = {"a": sa[0], "b": sb[0]}
    edge = any(len(ends[m].candidates) > 1 and s in (min(ends[m].candidates), max(ends[m].candidates))
               for c in fit.chosen for m, picked in c.items() for s in picked)
    return {"effect": Estimate.from_interval(fit.interval, fit.num_samples, seeds).as_json(),
            "chosen": [{k: list(v) for k, v in c.items()} for c in fit.chosen], "edge": edge}


def run_numbers(products: Products, r: Run) -> dict:
    """A run's fd_digits per scale (``scales``: means over seeds) and, paired against its reference set, the
    difference at each scale and at its best scale (once per report)."""
    key = ("run_numbers", r.key)
    if key not in products.memo:
        products.memo[key] = _run_numbers(products, r)
    return products.memo[key]


def _run_numbers(products: Products, r: Run) -> dict:
    from ..metrics.best_of_sweep import fd_interval
    from ..metrics.intervals import keep_ids

    g, (ref_run, ref_scale) = graded(products, r), reference(products, r)
    ref = graded(products, ref_run).products(ref_scale)
    scales = list(g.tables[0]["scales"])
    vs = {}
    for s in scales:
        sets = [(p, keep_ids(q, p["ids"]), real) for p, q, real in zip(g.products(s), ref, g.real())]
        vs[s] = Estimate.from_interval(fd_interval(sets, g.settings, RESAMPLES), len(sets[0][0]["ids"]),
                                       len(sets)).as_json()
    means = {s: {"fd_digits": sum(t["scales"][s]["fd_digits"] for t in g.tables) / g.seeds} for s in scales}
    return {"label": r.label, "seeds": g.seeds, "scales": means, "vs_reference": vs,
            "reference": f"{ref_run.label} at {ref_scale}", "best": best_of(products, r, resamples=RESAMPLES)}


def reference_level(products: Products, r: Run) -> dict:
    """The reference set's own fd_digits with its interval (over sample ids and seeds)."""
    from ..metrics.best_of_sweep import fd_interval

    g = graded(products, r)
    sets = [(p, None, real) for p, real in zip(g.products("0" if r.ddpm else "1"), g.real())]
    return Estimate.from_interval(fd_interval(sets, g.settings, RESAMPLES), len(sets[0][0]["ids"]),
                                  len(sets)).as_json()


TABLE_NOTE = ("Every figure is read against a reference set sampled with the same ids, per-sample seeds and "
              "training seed, paired (< 0: better than it): the unguided samples (CFG runs: CFG at s = 1); "
              "[95 %] over sample ids and training seeds. Best: " + SELECTION + "; shown: the scales chosen on "
              "seed 0 for the two halves, * where one lies at an end of the grid (the optimum may lie outside it).")


def runs_table(runs: dict) -> list[str]:
    return md_table(["run", "scales", "best: fd_digits − reference [95 %] at the chosen scales"],
                    [[v["label"], ", ".join(v["scales"]), best_text(v["best"])] for v in runs.values()])


def best_text(entry: dict) -> str:
    """``-0.05 [-0.09, -0.01] at 1 / 2`` (the scales chosen for the two halves, seed 0), ``*`` at a grid edge."""
    chosen = entry["chosen"][0]["a"]
    return (f"{Estimate.from_json(entry['effect']).text()} at {' / '.join(fmt(s) for s in chosen)}"
            + (" *" if entry["edge"] else ""))


def figure(res: SectionResult, panels: list[tuple[str, dict, list[str]]], name: str, caption: str,
           xlabel: str = "guidance scale", reference_name: str = "unguided") -> None:
    """One panel per ``(title, runs, keys)``: each run's paired difference to its reference set, with 95 % bands."""
    from ..io.figures import band_panels

    curves = [(title, [(runs[k]["label"], list(map(float, runs[k]["vs_reference"])),
                        list(runs[k]["vs_reference"].values())) for k in keys]) for title, runs, keys in panels]
    res.figure(band_panels(curves, xlabel, f"fd_digits − fd_digits({reference_name}), paired"), name, caption)


# ---- section 5 --------------------------------------------------------------------------------------------------
def sine_boost(products: Products) -> dict:
    """Per gamma, the sine boost's factor per DDPM step as our runs apply it (defined against EluCD's linear schedule
    with 250 steps), as the paper's formula would on our schedule, and in EluCD's own setting."""
    from ..guidance.schedules import sine_boost_settings

    schedule, train = (products.config_value("digits-cfg", f"model.init_args.{k}") for k in ("schedule",
                                                                                              "num_train_steps"))
    return {f"{g:g}": sine_boost_settings(schedule, train, products.preset.digits_ddpm_steps, g)
            for g in products.preset.sine_gammas if g > 0}


def sine_table(boost: dict) -> list[str]:
    import numpy as np

    rows = [[name, g, *(fmt(float(v)) for v in (np.median(f), np.quantile(f, 0.9), max(f)))]
            for g, settings in boost.items() for name, f in settings.items()]
    return md_table(["setting", "gamma", "median factor", "90th percentile", "max"], rows)


def sine_figure(res: SectionResult, boost: dict, gamma: str) -> None:
    from ..io.figures import axis_labels, legend_outside, pyplot, style

    fig, ax = pyplot().subplots(figsize=(5.2, 3.0))
    for i, (name, f) in enumerate(boost[gamma].items()):
        st = style(i)
        ax.plot([(k + 0.5) / len(f) for k in range(len(f))], f, label=name, color=st["color"], lw=1,
                linestyle=st["linestyle"], marker=st["marker"], markersize=2 if len(f) > 60 else 3)
    ax.set_yscale("log")
    axis_labels(ax, "sampling progress (step / steps; 0 = pure noise)", "boost factor of g (log)",
                f"sine boost per DDPM step, gamma = {gamma}")
    legend_outside(ax, fontsize=6)
    res.figure(fig, "digits_sine_boost.png", f"the sine boost's factor per DDPM step at gamma = {gamma}: as our runs "
               "apply it, as the paper's formula would on our schedule, and in EluCD's setting")


def analyse(products: Products, res: SectionResult) -> None:
    p, all_runs = products.preset, digits.runs(products.preset)
    want = {r.key: r for r in digits.of_section(p, "digits_cg")}
    runs, failed = {}, []
    for k, r in want.items():
        try:
            runs[k] = run_numbers(products, r)
        except LookupError:
            failed.append(r.label)
    if not runs:
        raise LookupError(products.failed_inputs([g for r in want.values() for g in r.grades(p)]))
    rt, rg = REFERENCE["tau2"], REFERENCE["gamma"]
    unguided = (lambda s: float(s) == 0, guided)
    pairs = {"clean_vs_noisy": ("cg-noisy", "cg-clean", (guided, guided)),  # fd(first) - fd(second)
             "guidance_helps": ("cg-clean", "cg-clean", unguided),
             "tau": (offtheshelf_key(1.0, rg), offtheshelf_key(rt, rg), (guided, guided)),
             "gamma": (offtheshelf_key(rt, 0.0), offtheshelf_key(rt, rg), (guided, guided)),
             "cfg_plus_cg": ("cfg", "cfg-plus-cg", (guided, guided))}
    compare = {}
    for name, (a, b, keep) in pairs.items():
        try:
            compare[name] = best_of(products, all_runs[a], all_runs[b], keep)
        except (KeyError, LookupError):
            pass
    boost = sine_boost(products)
    res.numbers = {"runs": runs, "compare": compare, "sine_boost": boost, "ddpm_steps": p.digits_ddpm_steps,
                   "reference": REFERENCE, "selection": SELECTION, "softplus_betas": list(SOFTPLUS_BETAS),
                   "softplus_beta": SOFTPLUS_NOT_RUN}
    seeds = next(iter(runs.values()))["seeds"]
    res.numbers["unguided"] = reference_level(products, all_runs["cg-clean"]) if "cg-clean" in runs else None
    res.markdown = [f"DDPM with {fmt(p.digits_ddpm_steps)} steps (CFG + classifier: DDIM with "
                    f"{fmt(p.digits_ddim_steps)}), {fmt(p.digits_samples_per_class * 10)} samples per scale and "
                    f"training seed, {fmt(seeds)} training seed(s) of the diffusion model and of each classifier. "
                    + (f"The unguided samples: fd_digits {Estimate.from_json(res.numbers['unguided']).text()}. "
                       if res.numbers["unguided"] else "") + TABLE_NOTE, "", *runs_table(runs)]
    if compare:
        res.markdown += ["Comparisons, paired on the same sample ids and training seeds, best against best (> 0: "
                         "the second named is better):", "",
                         *md_table(["comparison", "fd_digits difference [95 %]"],
                                   [[COMPARE_TEXT[k], Estimate.from_json(v["effect"]).text()]
                                    for k, v in compare.items()])]
    res.markdown += ["The sine boost multiplies g per DDPM step by the factors below; our runs define gamma against "
                     "EluCD's setting (linear schedule, 250 DDPM steps) at the same noise level:", "",
                     *sine_table(boost),
                     f"Softplus beta ∈ {{ReLU, {', '.join(fmt(b) for b in SOFTPLUS_BETAS)}}}: {SOFTPLUS_NOT_RUN}.", ""]
    if failed:
        res.markdown += [f"Runs whose steps failed (no rows): {', '.join(failed)}.", ""]
    ots = [k for k in runs if k.startswith("ots-")]
    panels = [("noisy vs clean classifier", runs, [k for k in ("cg-noisy", "cg-clean") if k in runs]),
              (f"tau2/tau1 (gamma = {fmt(rg)})", runs, [k for k in ots if k.endswith(f"gamma{rg:g}")]),
              (f"sine boost gamma (tau2/tau1 = {fmt(rt)})", runs, [k for k in ots if k.startswith(f"ots-tau{rt:g}-")])]
    figure(res, [x for x in panels if x[2]], "digits_cg_sweeps.png", "digits: fd_digits against the guidance scale, "
           "paired with the unguided samples (95 % bands over sample ids and training seeds): noisy vs clean "
           "classifier, and EluCD's ablations")
    if "cfg-plus-cg" in runs and "cfg_plus_cg" in compare:
        both = {**runs, "cfg": run_numbers(products, all_runs["cfg"])}
        figure(res, [("CFG + classifier vs CFG", both, ["cfg", "cfg-plus-cg"])], "digits_cfg_plus_cg.png",
               "digits: CFG alone and CFG + the clean classifier against the CFG scale s, paired with CFG at s = 1 "
               "(95 % bands)", "CFG scale s (1 = conditional)", "CFG s = 1")
    if f"{rg:g}" in boost:
        sine_figure(res, boost, f"{rg:g}")


COMPARE_TEXT = {"clean_vs_noisy": "noisy on x_t − clean on x0_hat",
                "guidance_helps": "unguided − clean classifier guidance",
                "tau": f"tau2/tau1 = 1 − tau2/tau1 = {REFERENCE['tau2']:g}",
                "gamma": f"gamma = 0 − gamma = {REFERENCE['gamma']:g}",
                "cfg_plus_cg": "CFG alone − CFG + classifier"}


# ---- claims -----------------------------------------------------------------------------------------------------
def compared(key: str, text: str):
    """A claim measured by one paired best-against-best comparison (the paper predicts it > 0)."""
    def measure(n) -> Measurement:
        c = numbers_of(n, "digits_cg")["compare"].get(key)
        if c is None:
            raise LookupError(f"the runs of {COMPARE_TEXT[key]} did not finish")
        edge = "; a best scale lies at an end of its grid" if c["edge"] else ""
        return Measurement(f"{text}: fd_digits {COMPARE_TEXT[key]} = {Estimate.from_json(c['effect']).text()}{edge}",
                           Estimate.from_json(c["effect"]), +1, "fd_digits difference")
    return measure


def run_of(n: dict, section: str, key: str) -> dict:
    return numbers_of(n, section)["runs"][key]


PAPER = "Ma et al. (EluCD)"
SECTION = Section(
    "digits_cg", "5. Digits, classifier guidance mirroring EluCD's tables", digits.DATA,
    (*digits.SIZES, "digits_classifier_steps", "digits_clean_steps", "cg_scales", "tau_ratios", "sine_gammas",
     "cfg_plus_cg_scales"), plan, analyse, claims=(
        Claim("clean_vs_noisy", PAPER, "an off-the-shelf clean classifier on x0_hat guides as well as a noisy "
              "classifier", "clean ≤ noisy in FID (best vs best)", compared("clean_vs_noisy", "best vs best"),
              SMALL_DATA),
        Claim("guidance_helps", PAPER, "off-the-shelf guidance improves over the unguided model",
              "guided FID < unguided FID", compared("guidance_helps", "best guided scale"), SMALL_DATA),
        Claim("tau", PAPER, "lowering tau2/tau1 below 1 improves FID (best near .5)",
              "tau2/tau1 = 0.5 better than 1 (best vs best)", compared("tau", "best vs best"), SMALL_DATA),
        Claim("sine_gamma", PAPER, "a sine-boosted schedule (gamma > 0) improves FID (best near .3)",
              "gamma = 0.3 better than 0 (best vs best)", compared("gamma", "best vs best"), SMALL_DATA),
        Claim("softplus", PAPER, "Softplus smoothing of ReLU lowers FID (beta 3 best)", "smaller beta is better", None,
              "", not_measured=SOFTPLUS_NOT_RUN),
        Claim("cfg_plus_cg", PAPER, "adding an off-the-shelf classifier to CFG improves FID",
              "CFG + CG better than CFG (best vs best over s)", compared("cfg_plus_cg", "best vs best over s"),
              SMALL_DATA)))
