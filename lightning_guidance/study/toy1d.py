"""Section 1: the 1D two-class mixture (classifier-centric study, §D.3), at mu = 1, 0.5, 0.1.

Steps: per mu, a CFG denoiser, a nonlinear (MLP) and a linear time-dependent classifier (``configs/toy/``).
Analysis: every intermediate state is needed for the denoising trajectories, which sample shards do not hold, so the
report samples here with the suite's own sampler function (DDIM, per-sample seeds ``seed + id``, as ``predict``
does), recording ``x_t`` at each step. Measured per method and scale: the mean signed distance from the exact
Bayes decision boundary (x = 0; positive on the requested class's side), the mean exact ``log p(x | y)`` and the
fraction of samples the exact posterior gives to the other class.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .plan import Plan
from .results import SectionResult, fmt, md_table, pyplot, save_figure

SECTION = "1D mixture"
SIGMA_KEY = "data.init_args.sigma"


def mu_tag(mu: float) -> str:
    return f"mu{mu:g}"


def plan_toy1d(plan: Plan) -> list[str]:
    p = plan.preset
    names = []
    for mu in p.mus:
        tag = mu_tag(mu)
        data = {"data.init_args.mu": mu, "data.init_args.batch_size": p.toy_batch_size}
        for kind, config, steps in (("cfg", "toy/cfg_1d.yaml", p.toy_train_steps),
                                    ("classifier", "toy/classifier_1d.yaml", p.toy_classifier_steps),
                                    ("linear", "toy/linear_classifier_1d.yaml", p.toy_classifier_steps)):
            names.append(plan.fit(f"toy1d-{tag}-{kind}", SECTION, config, f"toy1d/{tag}/{kind}", steps, data).name)
    return names


class _Recorder:
    """A guidance term that changes nothing and keeps every ``x_t`` the sampler shows it (the trajectory)."""

    supported_samplers = ("ddpm", "ddim", "edm")
    couples_batch = False

    def __init__(self):
        self.scale = 1.0
        self.states: list[torch.Tensor] = []

    def __call__(self, state):
        self.states.append(state.x_t.detach().clone())
        return torch.zeros_like(state.x_t)

    def edm_nudge(self, *args, **kwargs):
        return None


def sample_with_trajectories(diffusion, labels, seed: int, num_steps: int, cfg_scale: float = 1.0,
                             guidance=()) -> tuple[torch.Tensor, torch.Tensor]:
    """``(final samples (N, D), trajectory (steps + 1, N, D))`` of DDIM (eta 0) with per-sample seeds."""
    from ..diffusion.guidance_setting import GuidanceSetting
    from ..diffusion.noise import PerSampleNoise
    from ..diffusion.sampling import build_denoiser, sample

    recorder = _Recorder()
    seeds = torch.arange(len(labels)) + seed
    with torch.no_grad():
        x = sample("ddim", build_denoiser(diffusion, GuidanceSetting(cfg_scale)), diffusion.schedule, labels,
                   PerSampleNoise(seeds),
                   diffusion.data_shape, guidance=[*guidance, recorder], num_steps=num_steps, eta=0.0)
    return x, torch.stack([*recorder.states, x])


def analyse_toy1d(ctx) -> SectionResult:
    from ..guidance import ClassifierGuidance
    from ..modules.cfg_diffusion import CFGDiffusion
    from ..nets import TrainedClassifier
    from ..toy import two_class_mixture_1d

    p, run = ctx.preset, ctx.run_dir
    res = SectionResult("toy1d", "1. 1D two-class mixture: trajectories and distance from the decision boundary")
    n = p.toy_samples_per_class
    labels = torch.arange(2 * n) % 2
    methods = {"CFG": list(p.toy_cfg_scales), "CG, linear classifier": list(p.toy_cg_scales),
               "CG, MLP classifier": list(p.toy_cg_scales)}
    per_mu: dict[str, dict] = {}
    trajectories: dict[str, dict] = {}
    for mu in p.mus:
        tag = mu_tag(mu)
        cfg_step = ctx.step(f"toy1d-{tag}-cfg")
        diffusion = CFGDiffusion.from_checkpoint(cfg_step.product)
        sigma = float(ctx.config_value(cfg_step, SIGMA_KEY))
        mixture = two_class_mixture_1d(mu, sigma)
        guides = {"CG, linear classifier": TrainedClassifier(ctx.step(f"toy1d-{tag}-linear").product),
                  "CG, MLP classifier": TrainedClassifier(ctx.step(f"toy1d-{tag}-classifier").product)}
        rows = {}
        trajectories[tag] = {}
        for method, scales in methods.items():
            rows[method] = []
            for s in scales:
                if method == "CFG":
                    x, traj = sample_with_trajectories(diffusion, labels, 0, p.toy_num_steps, cfg_scale=s)
                    strength = s - 1.0
                else:
                    guide = ClassifierGuidance(guides[method], scale=s)
                    x, traj = sample_with_trajectories(diffusion, labels, 0, p.toy_num_steps, guidance=[guide])
                    strength = s
                x64 = x.to(torch.float64)
                signed = ((2 * labels - 1).to(torch.float64) * x64[:, 0])
                post = mixture.class_posterior(x64)
                rows[method].append({
                    "scale": float(s), "strength": float(strength),
                    "mean_boundary_distance": float(signed.mean()),
                    "mean_log_density": float(mixture.log_prob(x64, labels).mean()),
                    "wrong_class_fraction": float((post.argmax(1) != labels).to(torch.float64).mean()),
                })
                trajectories[tag][(method, float(s))] = traj
        per_mu[tag] = {"mu": float(mu), "sigma": sigma, "methods": rows}
    res.numbers = {"samples_per_class": n, "ddim_steps": p.toy_num_steps, "boundary": 0.0, "mus": per_mu}

    # figures: trajectories (one row per mu) and distance vs strength
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
            steps = range(traj.shape[0])
            for cls, color in ((0, "tab:blue"), (1, "tab:red")):
                ids = [i for i in range(traj.shape[1]) if i % 2 == cls][:k]
                for i in ids:
                    ax.plot(steps, traj[:, i], color=color, lw=0.7, alpha=0.7)
            ax.axhline(0, color="k", lw=0.5, ls=":")
            title = "conditional" if (method == "CFG" and s == 1.0) else f"{method} s={s:g}"
            ax.set_title(f"{title}\nmu={mu:g}", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.supxlabel("sampler step (noise → data)", fontsize=8)
    res.figure(save_figure(fig, run / "figures" / "toy1d_trajectories.png"), run,
               "1D denoising trajectories (blue: class 0 at -mu, red: class 1 at +mu)")

    fig, axes = plt.subplots(1, len(p.mus), figsize=(3.4 * len(p.mus), 2.8), squeeze=False)
    for c, mu in enumerate(p.mus):
        ax = axes[0][c]
        for method, rows in per_mu[mu_tag(mu)]["methods"].items():
            ax.plot([r["strength"] for r in rows], [r["mean_boundary_distance"] for r in rows], "o-", label=method)
        ax.set_title(f"mu = {mu:g}", fontsize=9)
        ax.set_xlabel("guidance strength (CG scale; CFG s - 1)", fontsize=8)
        ax.set_ylabel("mean distance from boundary", fontsize=8)
    axes[0][0].legend(fontsize=7)
    res.figure(save_figure(fig, run / "figures" / "toy1d_boundary_distance.png"), run,
               "mean signed distance from the decision boundary vs guidance strength")

    header = ["mu", "method", "scale", "mean distance from boundary", "mean log p(x|y)", "wrong class"]
    table = []
    for tag, info in per_mu.items():
        for method, rows in info["methods"].items():
            for r in rows:
                table.append([fmt(info["mu"]), method, fmt(r["scale"]), fmt(r["mean_boundary_distance"]),
                              fmt(r["mean_log_density"]), fmt(r["wrong_class_fraction"])])
    res.markdown = [f"DDIM with {fmt(p.toy_num_steps)} steps, {fmt(n)} samples per class, the same seeds for every "
                    f"method; distances are signed (positive: on the requested class's side of the exact boundary x = "
                    f"{fmt(res.numbers['boundary'])}).", "",
                    *res.markdown, *md_table(header, table)]
    return res
