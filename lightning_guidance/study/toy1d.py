"""Section 1: the 1D two-class mixture (classifier-centric study, §D.3), at mu = 1, 0.5, 0.1.

Steps, per mu: a CFG denoiser, a nonlinear (MLP) and a linear time-dependent classifier (``configs/toy/``), and three
``predict`` sweeps with DDIM and the same per-sample seeds (CFG over its scales; classifier guidance with each
classifier), each shard keeping its samples' trajectories (``save_trajectory``). Measured per method and scale from
the shards: the mean signed distance from the exact Bayes decision boundary (x = 0; positive on the requested
class's side), the mean exact ``log p(x | y)`` and the fraction of samples the exact posterior gives to the other
class.
"""

from __future__ import annotations

import torch

from .plan import SWEEP_VALUES, Plan, guide_checkpoint
from .section import Claim, Products, Section, SectionResult, fmt, md_table, monotone_up, numbers_of

SIGMA_KEY = "data.init_args.sigma"
SCALE_AXIS = "scale (CFG: s; CG: its guidance scale)"
SAMPLING, CG = "toy/sampling.yaml", ("toy/sampling.yaml", "guidance/cg.yaml")
#: method -> (sampling configs, classifier fit kind or None, preset field of its scales)
METHODS = {"CFG": (SAMPLING, None, "toy_cfg_scales"),
           "CG, linear classifier": (CG, "linear", "toy_cg_scales"),
           "CG, MLP classifier": (CG, "classifier", "toy_cg_scales")}


def mu_tag(mu: float) -> str:
    return f"mu{mu:g}"


def suffix(method: str) -> str:
    kind = METHODS[method][1]
    return "cfg" if kind is None else f"cg-{kind}"


def sample_step(tag: str, method: str) -> str:
    return f"sample-toy1d-{tag}-{suffix(method)}"


def plan(plan: Plan) -> None:
    p = plan.preset
    n = 2 * p.toy_samples_per_class  # one shard and one batch per scale, as every method of the section
    for mu in p.mus:
        tag = mu_tag(mu)
        data = {"data.init_args.mu": mu, "data.init_args.batch_size": p.toy_batch_size}
        for kind, config, steps in (("cfg", "toy/cfg_1d.yaml", p.toy_train_steps),
                                    ("classifier", "toy/classifier_1d.yaml", p.toy_classifier_steps),
                                    ("linear", "toy/linear_classifier_1d.yaml", p.toy_classifier_steps)):
            plan.fit(f"toy1d-{tag}-{kind}", config, f"toy1d/{tag}/{kind}", steps, data)
        for method, (config, kind, scales) in METHODS.items():
            name = sample_step(tag, method)
            edits = {SWEEP_VALUES: [float(s) for s in getattr(p, scales)], "model.init_args.save_trajectory": True,
                     "model.init_args.samples_per_class": p.toy_samples_per_class, "model.init_args.shard_size": n,
                     "model.init_args.batch_size": n, "model.init_args.sampler": "ddim",
                     "model.init_args.sampler_kwargs": {"num_steps": p.toy_num_steps, "eta": 0.0}}
            needs = [f"toy1d-{tag}-cfg"]
            if kind is not None:
                edits[guide_checkpoint(0)] = plan.product(f"toy1d-{tag}-{kind}")
                needs.append(f"toy1d-{tag}-{kind}")
            plan.sample(name, config, f"toy1d/{tag}/samples_{suffix(method)}", needs[0], edits, needs)


def analyse(products: Products, res: SectionResult) -> None:
    from ..toy import two_class_mixture_1d

    p = products.preset
    per_mu: dict[str, dict] = {}
    trajectories: dict[str, dict] = {}
    for mu in p.mus:
        tag = mu_tag(mu)
        sigma = float(products.config_value(f"toy1d-{tag}-cfg", SIGMA_KEY))
        mixture = two_class_mixture_1d(mu, sigma)
        rows, trajectories[tag] = {}, {}
        for method in METHODS:
            rows[method] = []
            for s, (x, labels, traj) in products.samples(sample_step(tag, method), trajectories=True).items():
                x64 = x.to(torch.float64)
                signed = (2 * labels - 1).to(torch.float64) * x64[:, 0]
                post = mixture.class_posterior(x64)
                rows[method].append({
                    "scale": s,
                    "mean_boundary_distance": float(signed.mean()),
                    "mean_log_density": float(mixture.log_prob(x64, labels).mean()),
                    "wrong_class_fraction": float((post.argmax(1) != labels).to(torch.float64).mean()),
                })
                trajectories[tag][(method, s)] = traj
        per_mu[tag] = {"mu": float(mu), "sigma": sigma, "methods": rows}
    res.numbers = {"samples_per_class": p.toy_samples_per_class, "ddim_steps": p.toy_num_steps, "boundary": 0.0,
                   "mus": per_mu}

    # figures: trajectories (one row per mu) and distance vs scale
    from ..io.figures import pyplot

    plt = pyplot()
    cols = [("CFG", 1.0), ("CG, linear classifier", max(p.toy_cg_scales)), ("CG, MLP classifier", max(p.toy_cg_scales))]
    cols += [("CFG", s) for s in p.toy_cfg_scales if s != 1.0]
    k = p.toy_trajectories_per_class
    fig, axes = plt.subplots(len(p.mus), len(cols), figsize=(2.6 * len(cols), 2.2 * len(p.mus)), squeeze=False,
                             sharey="row")
    for r, mu in enumerate(p.mus):
        for c, (method, s) in enumerate(cols):
            traj = trajectories[mu_tag(mu)][(method, s)][:, :, 0].numpy()
            ax = axes[r][c]
            for cls, color in ((0, "tab:blue"), (1, "tab:red")):
                for i in [i for i in range(traj.shape[1]) if i % 2 == cls][:k]:
                    ax.plot(range(traj.shape[0]), traj[:, i], color=color, lw=0.7, alpha=0.7)
            ax.axhline(0, color="k", lw=0.5, ls=":")
            title = "conditional" if (method == "CFG" and s == 1.0) else f"{method} s={s:g}"
            ax.set_title(f"{title}\nmu={mu:g}", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.supxlabel("sampler step (noise → data)", fontsize=8)
    res.figure(fig, "toy1d_trajectories.png", "1D denoising trajectories (blue: class 0 at -mu, red: class 1 at +mu)")

    fig, axes = plt.subplots(1, len(p.mus), figsize=(3.4 * len(p.mus), 2.8), squeeze=False)
    for c, mu in enumerate(p.mus):
        ax = axes[0][c]
        for method, rows in per_mu[mu_tag(mu)]["methods"].items():
            ax.plot([r["scale"] for r in rows], [r["mean_boundary_distance"] for r in rows], "o-", label=method)
        ax.set_title(f"mu = {mu:g}", fontsize=9)
        ax.set_xlabel(SCALE_AXIS, fontsize=8)
        ax.set_ylabel("mean distance from boundary", fontsize=8)
    axes[0][0].legend(fontsize=7)
    res.figure(fig, "toy1d_boundary_distance.png", "mean signed distance from the decision boundary vs scale")

    table = [[fmt(info["mu"]), method, fmt(r["scale"]), fmt(r["mean_boundary_distance"]), fmt(r["mean_log_density"]),
              fmt(r["wrong_class_fraction"])]
             for info in per_mu.values() for method, rows in info["methods"].items() for r in rows]
    res.markdown = [f"DDIM with {fmt(p.toy_num_steps)} steps, {fmt(p.toy_samples_per_class)} samples per class, the "
                    "same seeds for every method; distances are signed (positive: on the requested class's side of "
                    f"the exact boundary x = {fmt(res.numbers['boundary'])}).", "", *res.markdown,
                    *md_table(["mu", "method", "scale", "mean distance from boundary", "mean log p(x|y)",
                               "wrong class"], table)]


def c_boundary(n):
    parts, ok = [], True
    for info in numbers_of(n, "toy1d")["mus"].values():
        for method, rows in info["methods"].items():
            ok &= monotone_up([r["scale"] for r in rows], [r["mean_boundary_distance"] for r in rows]) > 0
            parts.append(f"mu {fmt(info['mu'])} {method.split(',')[0] if method == 'CFG' else method[4:]}: "
                         f"{fmt(rows[0]['mean_boundary_distance'])} → {fmt(rows[-1]['mean_boundary_distance'])}")
    return "; ".join(parts), ok


SECTION = Section(
    "toy1d", "1. 1D two-class mixture: trajectories and distance from the decision boundary",
    "the exact 1D two-class mixture (embedded)",
    ("mus", "toy_train_steps", "toy_classifier_steps", "toy_batch_size", "toy_samples_per_class", "toy_num_steps",
     "toy_cfg_scales", "toy_cg_scales", "toy_trajectories_per_class"),
    plan, analyse,
    claims=(Claim("boundary_distance", "Zhao & Schwing (classifier-centric)",
                  "guidance pushes samples away from the decision boundary, further at larger scales",
                  "distance grows with the scale (CG and CFG)", c_boundary,
                  "at mu = 0.1 the classes overlap and a briefly trained model/classifier gives a weak, noisy push"),))
