"""Section 5: classifier guidance on digits mirroring EluCD's tables: the noisy classifier on ``x_t`` vs the clean
(off-the-shelf) classifier on ``x0_hat``; ablations of the denoised input (detached vs through the denoiser), tau2/tau1
and the sine boost gamma at one guidance scale; CFG + classifier vs CFG alone."""

from __future__ import annotations

from . import digits
from .digits import METRICS, NOISE, REFERENCE, offtheshelf_key
from .section import Claim, Products, Section, SectionResult, fmt, md_table, numbers_of

#: the Softplus betas of EluCD's smoothness ablation, and why it is not run here
SOFTPLUS_BETAS = (8.0, 5.0, 3.0)
SOFTPLUS_NOT_RUN = ("every digits classifier of the suite uses SiLU, which has no ReLU for the Softplus swap to "
                    "replace, so this ablation is not run")


def plan(plan) -> None:
    digits.plan_base(plan)
    digits.plan_classifiers(plan)
    for r in digits.of_section(plan.preset, "digits_cg"):
        digits.plan_run(plan, r)


def analyse(products: Products, res: SectionResult) -> None:
    from ..io.figures import pyplot

    p, tables = products.preset, digits.read_tables(products)
    want = digits.of_section(p, "digits_cg")
    have = [r for r in want if r.key in tables]
    if not have:
        raise LookupError(products.failed_inputs([r.grade for r in want]))
    res.numbers = {"runs": {r.key: {"label": r.label, **tables[r.key]} for r in have},
                   "ablation_scale": p.ablation_scale, "ddpm_steps": p.digits_ddpm_steps, "reference": REFERENCE,
                   "softplus_betas": list(SOFTPLUS_BETAS), "softplus_beta": SOFTPLUS_NOT_RUN}
    s_abl = f"{p.ablation_scale:g}"

    def at_abl(key):
        return tables[key]["scales"].get(s_abl) if key in tables else None

    def rows_of(pairs) -> list[list[str]]:
        return [[label, *(fmt(at_abl(k).get(m)) for m in METRICS)] for k, label in pairs if at_abl(k)]

    rt, rg = REFERENCE["tau2"], REFERENCE["gamma"]
    compare = [("cg-noisy", "noisy classifier, x_t"), ("cg-clean", "clean classifier, x0_hat (detached)"),
               (offtheshelf_key(rt, rg, False), f"off-the-shelf reference (tau2/tau1 = {fmt(rt)}, gamma = {fmt(rg)})"),
               (offtheshelf_key(rt, rg, True), "reference, gradient through the denoiser")]
    betas = ", ".join(["ReLU", *(fmt(b) for b in SOFTPLUS_BETAS)])
    blocks = ["Classifier and its input, at guidance scale " + s_abl + ":", "",
              *md_table(["guide", *METRICS], rows_of(compare)),
              f"tau2/tau1 (tau1 = {fmt(REFERENCE['tau1'])}, gamma = {fmt(rg)}):", "",
              *md_table(["tau2/tau1", *METRICS],
                        rows_of((offtheshelf_key(t, rg, False), fmt(t)) for t in p.tau_ratios)),
              f"Sine boost gamma (tau2/tau1 = {fmt(rt)}):", "",
              *md_table(["gamma", *METRICS], rows_of((offtheshelf_key(rt, g, False), fmt(g)) for g in p.sine_gammas)),
              f"Softplus beta ∈ {{{betas}}}: {SOFTPLUS_NOT_RUN}.", ""]
    if "cfg-plus-cg" in tables and "cfg" in tables:
        rows = []
        for s, m in tables["cfg-plus-cg"]["scales"].items():
            c = tables["cfg"]["scales"].get(s)
            rows.append([s, fmt(c["fd_digits"]) if c else "—", fmt(m["fd_digits"]),
                         fmt(c["judge_accuracy"]) if c else "—", fmt(m["judge_accuracy"])])
        blocks += ["CFG + classifier vs CFG alone (same CFG scale):", "",
                   *md_table(["CFG scale", "fd_digits CFG", "fd_digits CFG + CG", "judge acc. CFG",
                              "judge acc. CFG + CG"], rows)]
    sweep = [r for r in have if r.key in ("cg-noisy", "cg-clean")]
    if sweep:
        fig, ax = pyplot().subplots(figsize=(4.5, 3))
        for r in sweep:
            t = tables[r.key]["scales"]
            ax.plot([float(s) for s in t], [m["fd_digits"] for m in t.values()], "o-", label=r.label)
        ax.set_xlabel("guidance scale", fontsize=8), ax.set_ylabel("fd_digits", fontsize=8)
        ax.legend(fontsize=7)
        res.figure(fig, "digits_cg_noisy_vs_clean.png", "digits: noisy vs clean classifier guidance")
    res.markdown = [f"DDPM with {fmt(p.digits_ddpm_steps)} steps; every ablation at guidance scale "
                    f"{fmt(p.ablation_scale)} with the same seeds.", "", *blocks, *res.markdown,
                    *digits.run_table(have, tables)]
    missing = [r.label for r in want if r.key not in tables]
    if missing:
        res.markdown += [f"Runs whose steps failed (no rows): {', '.join(missing)}.", ""]


# ---- claims ---------------------------------------------------------------------------------------------------------
def run_of(n: dict, section: str, key: str) -> dict:
    return numbers_of(n, section)["runs"][key]


def c_clean_vs_noisy(n):
    bc, bn = (digits.best_guided(run_of(n, "digits_cg", k)) for k in ("cg-clean", "cg-noisy"))
    return f"best guided fd_digits: clean on x0_hat {fmt(bc)}, noisy on x_t {fmt(bn)}", bc <= bn


def c_guidance_helps(n):
    clean = run_of(n, "digits_cg", "cg-clean")
    b, unguided = digits.best_guided(clean), digits.fd(clean)[0.0]
    return f"clean-classifier guidance: unguided {fmt(unguided)}, best guided {fmt(b)}", b < unguided


def ablation(n, keys: list[tuple[float, str]]) -> dict[float, float]:
    s = numbers_of(n, "digits_cg")
    scale = f"{s['ablation_scale']:g}"
    out = {value: s["runs"][key]["scales"][scale]["fd_digits"] for value, key in keys
           if key in s["runs"] and scale in s["runs"][key]["scales"]}
    if len(out) < 2:
        raise LookupError("fewer than two ablation runs finished")
    return out


def c_tau(n):
    runs = numbers_of(n, "digits_cg")["runs"]
    vals = ablation(n, [(float(k.split("tau")[1].split("-")[0]), k) for k in runs
                        if k.startswith("ots-") and k.endswith(f"gamma{REFERENCE['gamma']:g}")])
    best = min(vals, key=vals.get)
    pairs = sorted(vals.items(), reverse=True)
    return ("fd_digits by tau2/tau1: " + ", ".join(f"{fmt(t)}: {fmt(v)}" for t, v in pairs),
            best < 1.0 and vals[best] < vals.get(1.0, float("inf")))


def c_gamma(n):
    runs = numbers_of(n, "digits_cg")["runs"]
    vals = ablation(n, [(float(k.split("gamma")[1]), k) for k in runs
                        if k.startswith(f"ots-tau{REFERENCE['tau2']:g}-gamma") and not k.endswith("through")])
    best = min(vals, key=vals.get)
    return ("fd_digits by gamma: " + ", ".join(f"{fmt(g)}: {fmt(v)}" for g, v in sorted(vals.items())),
            best > 0 and vals[best] < vals.get(0.0, float("inf")))


def c_cfg_plus_cg(n):
    both, cfg = digits.fd(run_of(n, "digits_cg", "cfg-plus-cg")), digits.fd(numbers_of(n, "digits_cfg")["table"])
    pairs = [(s, v, cfg[s]) for s, v in both.items() if s in cfg]
    if not pairs:
        raise LookupError("no common CFG scale")
    wins = sum(v < c for _, v, c in pairs)
    return "; ".join(f"s = {fmt(s)}: CFG {fmt(c)}, CFG + CG {fmt(v)}" for s, v, c in pairs), wins * 2 > len(pairs)


PAPER = "Ma et al. (EluCD)"
SECTION = Section(
    "digits_cg", "5. Digits, classifier guidance mirroring EluCD's tables", digits.DATA,
    (*digits.SIZES, "digits_classifier_steps", "digits_clean_steps", "cg_scales", "ablation_scale", "tau_ratios",
     "sine_gammas", "cfg_plus_cg_scales"), plan, analyse, claims=(
        Claim("clean_vs_noisy", PAPER, "an off-the-shelf clean classifier on x0_hat guides as well as a noisy "
              "classifier", "clean ≤ noisy in FID", c_clean_vs_noisy, NOISE),
        Claim("guidance_helps", PAPER, "off-the-shelf guidance improves over the unguided model",
              "guided FID < unguided FID", c_guidance_helps, NOISE),
        Claim("tau", PAPER, "lowering tau2/tau1 below 1 improves FID (best near .5)", "best tau2/tau1 < 1", c_tau,
              NOISE),
        Claim("sine_gamma", PAPER, "a sine-boosted schedule (gamma > 0) improves FID (best near .3)", "best gamma > 0",
              c_gamma, NOISE + "; few DDPM steps make the boost's shape coarse"),
        Claim("softplus", PAPER, "Softplus smoothing of ReLU lowers FID (beta 3 best)", "smaller beta is better", None,
              "", not_measured=SOFTPLUS_NOT_RUN),
        Claim("cfg_plus_cg", PAPER, "adding an off-the-shelf classifier to CFG improves FID",
              "CFG + CG < CFG at the same scale", c_cfg_plus_cg, NOISE)))
