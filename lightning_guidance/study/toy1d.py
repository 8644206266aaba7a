"""Section 1: the 1D two-class mixture (classifier-centric study, §3.2-3.3 and §D.3), at mu = 1, 0.5, 0.1.

Steps, per mu and training seed: a CFG denoiser, a nonlinear (MLP) and a linear time-dependent classifier
(``configs/toy/``), and four ``predict`` sweeps with DDIM and the same per-sample seeds, each shard keeping its
samples' trajectories (``save_trajectory``): CFG over its scales; classifier guidance of the *unconditional* model
(the CFG model's null class, the paper's Eq. 7) with each classifier; classifier guidance of the conditional model
with the MLP classifier. Measured per sample from the shards: the path's distance from the exact decision boundary
(``toy.mixture1d.boundary_path_distance``: the signed distance averaged over every sampler state, in units of mu),
the exact ``log p(x | y)`` and whether the exact posterior prefers the other class; each figure with its bootstrap
interval over sample ids and training seeds (``metrics.exact_intervals``), beside the exact conditional's own rows.
"""

from __future__ import annotations

import numpy as np

from ..io.toy_figures import BandPanel, band_grid, paths_grid
from ..metrics.exact_intervals import per_sample_estimate
from ..stats import Estimate, text
from ..toy import exact_conditional_scores, two_class_mixture_1d
from ..toy.exact_scores import per_sample_scores
from ..toy.mixture1d import boundary_path_distance
from .plan import SWEEP_VALUES, Plan, guide_checkpoint, seeded
from ..io.tables import fmt, md_table
from ..launch.products import Products
from ..stats.claims import Claim, stored_effect
from .section import Section, SectionResult

SIGMA_KEY = "data.init_args.sigma"
SCALE_AXIS = "scale (CFG: s; CG: its guidance scale)"
#: the section's figures: (the per-sample figure it reduces, mean or median)
FIGURES = {"path_distance": ("path_distance", "mean"), "mean_log_density": ("log_density", "mean"),
           "median_log_density": ("log_density", "median"), "wrong_class_fraction": ("wrong_class", "mean")}
SAMPLING = "toy/sampling.yaml"
CG, CG_UNCOND = (SAMPLING, "guidance/cg.yaml"), (SAMPLING, "guidance/cg_unconditional.yaml")
#: key -> (label, sampling config, classifier fit kind or None, preset field of its scales, the claim's baseline)
METHODS = {"cfg": ("CFG", SAMPLING, None, "toy_cfg_scales", 1.0),
           "cg_uncond_linear": ("CG of the unconditional model, linear classifier", CG_UNCOND,
                                "linear", "toy_cg_scales", 1.0),
           "cg_uncond_mlp": ("CG of the unconditional model, MLP classifier", CG_UNCOND,
                             "classifier", "toy_cg_scales", 1.0),
           "cg_mlp": ("CG of the conditional model, MLP classifier", CG, "classifier",
                      "toy_cg_scales", 0.0)}
#: the boundary claims: which methods each pools (over mu and those methods, per sample id)
FAMILIES = {"cg_uncond": ("cg_uncond_linear", "cg_uncond_mlp"), "cg": ("cg_mlp",), "cfg": ("cfg",)}


def mu_tag(mu: float) -> str:
    return f"mu{mu:g}"


def sample_step(tag: str, method: str) -> str:
    return f"sample-toy1d-{tag}-{method.replace('_', '-')}"


def plan(plan: Plan) -> None:
    p = plan.preset
    n = 2 * p.toy_samples_per_class  # one shard and one batch per scale, as every method of the section
    for seed in p.training_seeds:
        for mu in p.mus:
            tag = mu_tag(mu)
            data = {"data.init_args.mu": mu, "data.init_args.batch_size": p.toy_batch_size}
            for kind, config, steps in (("cfg", "toy/cfg_1d.yaml", p.toy_train_steps),
                                        ("classifier", "toy/classifier_1d.yaml", p.toy_classifier_steps),
                                        ("linear", "toy/linear_classifier_1d.yaml", p.toy_classifier_steps)):
                plan.fit(f"toy1d-{tag}-{kind}", config, f"toy1d/{tag}/{kind}", steps, data, seed=seed)
            for method, (_, config, kind, scales, _) in METHODS.items():
                edits = {SWEEP_VALUES: [float(s) for s in getattr(p, scales)], "model.init_args.save_trajectory": True,
                         "model.init_args.samples_per_class": p.toy_samples_per_class,
                         "model.init_args.shard_size": n, "model.init_args.batch_size": n,
                         "model.init_args.sampler": "ddim",
                         "model.init_args.sampler_kwargs": {"num_steps": p.toy_num_steps, "eta": 0.0}}
                needs = [f"toy1d-{tag}-cfg"]
                if kind is not None:
                    edits[guide_checkpoint(0)] = plan.product(seeded(f"toy1d-{tag}-{kind}", seed))
                    needs.append(f"toy1d-{tag}-{kind}")
                plan.sample(sample_step(tag, method), config, f"toy1d/{tag}/samples_{method}", needs[0], edits, needs,
                            seed=seed)


def read(products: Products, mu: float, seeds) -> tuple[float, dict, dict]:
    """sigma, ``{method: {scale: [per seed: {figure: (N,) array}]}}`` and seed 0's trajectories."""
    tag = mu_tag(mu)
    sigma = float(products.config_value(f"toy1d-{tag}-cfg", SIGMA_KEY))
    mixture = two_class_mixture_1d(mu, sigma)
    per_sample, paths = {}, {}
    for method in METHODS:
        for seed in seeds:
            for s, (x, labels, traj) in products.samples(seeded(sample_step(tag, method), seed), True).items():
                rows = per_sample_scores(mixture, x, labels)
                rows["path_distance"] = boundary_path_distance(traj, labels, mu)
                per_sample.setdefault(method, {}).setdefault(s, []).append({k: v.numpy() for k, v in rows.items()})
                if seed == seeds[0]:
                    paths[(method, s)] = (traj[:, :, 0].numpy(), labels.numpy())
    return sigma, per_sample, paths


def analyse(products: Products, res: SectionResult) -> None:
    p = products.preset
    seeds = list(p.training_seeds)
    per_mu, paths, effects = {}, {}, {f: [] for f in FAMILIES}
    for mu in p.mus:
        tag = mu_tag(mu)
        sigma, per_sample, paths[tag] = read(products, mu, seeds)
        exact = exact_conditional_scores(mu, sigma)
        methods = {}
        for method, (label, _, _, _, base) in METHODS.items():
            runs, top = per_sample[method], max(per_sample[method])
            effect = [r["path_distance"] - b["path_distance"] for r, b in zip(runs[top], runs[base])]
            effects[next(f for f, members in FAMILIES.items() if method in members)].append(effect)
            methods[method] = {"label": label, "baseline": base, "top": top,
                               "effect": per_sample_estimate(effect).as_json(),
                               "rows": [{"scale": s, **{k: per_sample_estimate([r[src] for r in runs[s]], reduce=red)
                                                        .as_json() for k, (src, red) in FIGURES.items()}}
                                        for s in sorted(runs)]}
        per_mu[tag] = {"mu": float(mu), "sigma": sigma, "methods": methods,
                       "exact": {k: Estimate.exact(v).as_json() for k, v in exact.items()}}
    pooled = lambda cells: [np.mean([c[s] for c in cells], axis=0) for s in range(len(seeds))]  # noqa: E731
    claims = {f: per_sample_estimate(pooled(cells)).as_json() for f, cells in effects.items()}
    res.numbers = {"samples_per_class": p.toy_samples_per_class, "ddim_steps": p.toy_num_steps,
                   "training_seeds": seeds, "mus": per_mu, "claims": claims}
    figures(p, res, per_mu, paths)
    table = []
    for info in per_mu.values():
        table.append([fmt(info["mu"]), "exact p(x | y) (closed form)", "—", "—",
                      *(fmt(info["exact"][k]["value"]) for k in list(FIGURES)[1:])])
        for m in info["methods"].values():
            table += [[fmt(info["mu"]), m["label"], fmt(r["scale"]),
                       *(text(r[k]) for k in FIGURES)] for r in m["rows"]]
    res.markdown = [f"DDIM with {fmt(p.toy_num_steps)} steps, {fmt(p.toy_samples_per_class)} samples per class and "
                    f"{fmt(len(seeds))} training seed(s) of every model, the same per-sample seeds for every method. "
                    "*Path distance*: per sample, the signed distance from the exact decision boundary (x = 0 at "
                    "every noise level) averaged over all the sampler's states from the noise to the sample, in units "
                    "of mu (positive: the requested class's side; 1 at the end of a path: the class mean). Every "
                    "figure: mean [95 % bootstrap interval over sample ids and training seeds]; the exact rows are "
                    "closed forms.", "", *dispersion(per_mu), "", *res.markdown,
                    *md_table(["mu", "method", "scale", "path distance (units of mu)", "mean log p(x|y)",
                               "median log p(x|y)", "wrong class"], table)]


def dispersion(per_mu: dict) -> list[str]:
    """Per mu, the conditional model's wrong-class share (CFG at s = 1, before any guidance) against the exact
    conditional's: below it the model is under-dispersed (too few samples in the overlap)."""
    out = []
    for info in per_mu.values():
        row = next((r for r in info["methods"]["cfg"]["rows"] if r["scale"] == 1.0), None)
        if row is None:
            continue
        model, exact = Estimate.from_json(row["wrong_class_fraction"]), info["exact"]["wrong_class_fraction"]["value"]
        verdict = ("under-dispersed before any guidance" if model.hi < exact else "over-dispersed" if model.lo > exact
                   else "consistent with the exact share")
        out.append(f"- mu = {fmt(info['mu'])}: the exact conditional puts {fmt(exact)} of its samples on the other "
                   f"class's side; the model at s = 1 puts {model.text()}: {verdict}.")
    return out


def figures(p, res: SectionResult, per_mu: dict, paths: dict) -> None:
    top, top_cfg = max(p.toy_cg_scales), max(p.toy_cfg_scales)
    cols = [("cfg", 1.0, "conditional model (s = 1)"), ("cg_uncond_mlp", 0.0, "unconditional model"),
            *((m, s, f"{name}, scale {s:g}") for m, s, name in (
                ("cg_uncond_mlp", 1.0, "CG uncond., MLP"), ("cg_uncond_mlp", top, "CG uncond., MLP"),
                ("cg_uncond_linear", top, "CG uncond., linear"), ("cg_mlp", top, "CG cond., MLP"))),
            ("cfg", top_cfg, f"CFG, s = {top_cfg:g}")]
    rows = [(f"x_t (mu = {mu:g})", [(title, *paths[mu_tag(mu)][(method, s)]) for method, s, title in cols])
            for mu in p.mus]
    res.figure(paths_grid(rows, p.toy_trajectories_per_class), "toy1d_trajectories.png", "1D sampling paths of the "
               "first training seed (blue: class 0 at -mu, red: class 1 at +mu; dotted: the exact decision boundary)")

    def panel(info: dict, key: str, y_label: str, title: str) -> BandPanel:
        curves = [(m["label"], [r["scale"] for r in m["rows"]], [r[key] for r in m["rows"]])
                  for m in info["methods"].values()]
        exact = (info["exact"][key]["value"], "exact p(x | y)") if key == "wrong_class_fraction" else None
        return BandPanel(title, y_label, curves, exact)

    columns = [[panel(info, "path_distance", "path distance (units of mu)", f"mu = {info['mu']:g}"),
                panel(info, "wrong_class_fraction", "wrong-class share", "")] for info in per_mu.values()]
    res.figure(band_grid(columns, SCALE_AXIS), "toy1d_boundary_distance.png", "path distance from the decision "
               "boundary and wrong-class share vs scale, each point with its 95 % interval (the claims' paired "
               "differences are narrower: the initial noise is shared); dotted: the exact conditional")


def boundary_claim(family: str, what: str):
    def words(toy: dict, effect: Estimate) -> str:
        cells = [f"mu {fmt(info['mu'])} {m['label']} (scale {fmt(m['top'])} − {fmt(m['baseline'])}): "
                 f"{text(m['effect'])}"
                 for info in toy["mus"].values() for key, m in info["methods"].items() if key in FAMILIES[family]]
        return f"{what}, mean over mu and classifiers: {effect.text()}; per cell: " + "; ".join(cells)
    return stored_effect("toy1d", ("claims", family), words, +1, "path distance (units of mu)", family)


PAPER = "Zhao & Schwing (classifier-centric)"
REASON = "at mu = 0.1 the classes overlap and a briefly trained model/classifier gives a weak, noisy push"
SECTION = Section(
    "toy1d", "1. 1D two-class mixture: trajectories and distance from the decision boundary",
    "the exact 1D two-class mixture (embedded)",
    ("mus", "toy_train_steps", "toy_classifier_steps", "toy_batch_size", "toy_samples_per_class", "toy_num_steps",
     "toy_cfg_scales", "toy_cg_scales", "toy_trajectories_per_class", "training_seeds"),
    plan, analyse,
    claims=(Claim("boundary_cg", PAPER, "classifier guidance (Eq. 7: the unconditional model plus the classifier's "
                  "gradient) pushes the sampling paths away from the decision boundary, further at larger scales",
                  "path distance at the largest scale − at scale 1 > 0",
                  boundary_claim("cg_uncond", "path distance, largest CG scale − scale 1"), REASON),
            Claim("boundary_cg_conditional", PAPER, "so does classifier guidance of the conditional model",
                  "path distance at the largest scale − unguided > 0",
                  boundary_claim("cg", "path distance, largest CG scale − unguided"), REASON),
            Claim("boundary_cfg", PAPER, "classifier-free guidance also pushes the paths away from the decision "
                  "boundary", "path distance at the largest s − at s = 1 > 0",
                  boundary_claim("cfg", "path distance, largest s − s = 1"), REASON)))
