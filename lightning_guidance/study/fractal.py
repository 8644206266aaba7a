"""Sections 2 and 3: the 2D fractal (Karras et al. 2024 toy) — sample panels before and after the rectified-flow
post-processor, and every guidance method (the seed papers' and the modern CFG variants) at every scale scored
against the exact class-conditional distribution (``toy.exact_scores.score_samples``), same seeds for every method.

Steps: a CFG denoiser, the linear time-dependent classifier and autoguidance's worse model (``configs/fractal/``),
one ``predict`` per guidance method (the shipped ``configs/fractal/sample_*.yaml``), each a sweep over its scales,
and per post-processed set (CG of the unconditional model at a weak and a large scale, CFG at the largest scale:
the classifier-centric study's Fig. 4 and 5) a ``fit`` and a ``predict`` of ``configs/fractal/flow_*.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .plan import SWEEP_VALUES, Plan, Step, configs_of, guide_checkpoint, step_config, term
from .results import SectionResult, fmt, md_table, pyplot, save_figure

SECTION = "2D fractal"
TERM0 = term(0)
#: the exact scores' settings: sliced W1 (the tables' "sliced W1") on 64 directions, seed 0
SCORING = {"seed": 0, "num_projections": 64, "p": 1}
#: the exact scores the benchmark tabulates (toy.exact_scores.score_samples), with their column titles
SCORES = (("mean_log_density", "mean log p(x|y) ↑"), ("wrong_class_fraction", "wrong class ↓"),
          ("sliced_wasserstein", "sliced W1 ↓"), ("spread", "spread (1 = exact)"), ("recall", "recall ↑"))


@dataclass(frozen=True)
class FractalMethod:
    key: str
    label: str
    config: str
    scales: str  # the preset field holding its sweep
    guided: bool = True  # reads the linear classifier
    edits: tuple = ()
    family: str = "paper"  # paper: the seed papers' methods; variant: the modern CFG variants (issue 13)
    autoguide: bool = False  # reads autoguidance's worse model


#: the modern CFG variants that apply to points (frequency-decoupled and the attention perturbations need images)
VARIANTS = (("interval", "CFG, guidance interval", ("fractal/sampling.yaml", "guidance/cfg_interval.yaml")),
            ("rescale", "CFG rescale", ("fractal/sampling.yaml", "guidance/cfg_rescale.yaml")),
            ("apg", "adaptive projected guidance", ("fractal/sampling.yaml", "guidance/apg.yaml")),
            ("cfg_zero_star", "CFG-Zero*", ("fractal/sampling.yaml", "guidance/cfg_zero_star.yaml")),
            ("tangential", "tangential CFG", ("fractal/sampling.yaml", "guidance/tangential_cfg.yaml")),
            ("autoguidance", "autoguidance", ("fractal/sampling.yaml", "guidance/autoguidance.yaml")))


def fractal_methods(preset) -> list[FractalMethod]:
    methods = [FractalMethod("cfg", "CFG", "fractal/sampling.yaml", "fractal_cfg_scales", guided=False),
               FractalMethod("cg", "CG (linear classifier, x_t)", ("fractal/sampling.yaml", "guidance/cg.yaml"), "fractal_guidance_scales"),
               FractalMethod("cg_uncond", "CG of the unconditional model (linear classifier)",
                             ("fractal/sampling.yaml", "guidance/cg_unconditional.yaml"), "fractal_cg_flow_scales"),
               FractalMethod("cfg_plus_cg", "CFG + classifier", ("fractal/sampling.yaml", "guidance/cfg_plus_cg.yaml"),
                             "fractal_cfg_plus_cg_scales"),
               FractalMethod("offtheshelf", "off-the-shelf (x0_hat)", ("fractal/sampling.yaml", "guidance/offtheshelf.yaml"),
                             "fractal_guidance_scales"),
               FractalMethod("tilted", "tilted", ("fractal/sampling.yaml", "guidance/tilted.yaml"), "fractal_guidance_scales"),
               FractalMethod("entropy", "entropy-adaptive", ("fractal/sampling.yaml", "guidance/entropy.yaml"), "fractal_guidance_scales")]
    methods += [FractalMethod(f"divergence_{d}", f"f-divergence ({d})", ("fractal/sampling.yaml", "guidance/divergence.yaml"),
                              "fractal_guidance_scales", edits=((f"{TERM0}.init_args.divergence", d),))
                for d in preset.fractal_divergences]
    methods += [FractalMethod(key, label, config, "fractal_variant_scales", guided=False, family="variant",
                              autoguide=key == "autoguidance") for key, label, config in VARIANTS]
    return methods


@dataclass(frozen=True)
class FractalFlow:
    """One post-processed set: the flow config and the sampled set (method, scale) it is trained on and applied to."""
    key: str
    config: str
    method: str
    scale: float


def fractal_flows(preset) -> list[FractalFlow]:
    weak, large = min(preset.fractal_cg_flow_scales), max(preset.fractal_cg_flow_scales)
    return [FractalFlow("cg_weak", "fractal/flow.yaml", "cg_uncond", weak),
            FractalFlow("cg_large", "fractal/flow.yaml", "cg_uncond", large),
            FractalFlow("cfg", "fractal/flow.yaml", "cfg", max(preset.fractal_cfg_scales))]


def sample_step(method: str) -> str:
    return f"sample-fractal-{method}"


def _sampling(config) -> dict:
    return step_config(Step("", "", "predict", configs_of(config)))["model"]["init_args"]


def plan_fractal(plan: Plan) -> list[str]:
    p = plan.preset
    plan.fit("fractal-cfg", SECTION, "fractal/cfg.yaml", "fractal/cfg", p.fractal_train_steps)
    plan.fit("fractal-classifier", SECTION, "fractal/classifier.yaml", "fractal/classifier", p.fractal_classifier_steps)
    plan.fit("fractal-cfg-bad", SECTION, "fractal/cfg_autoguide_bad.yaml", "fractal/cfg_autoguide_bad",
             p.fractal_autoguide_bad_steps)
    names = ["fractal-cfg", "fractal-classifier", "fractal-cfg-bad"]
    n = 2 * p.fractal_samples_per_class
    methods = {m.key: m for m in fractal_methods(p)}
    for m in methods.values():
        sampler = _sampling(m.config).get("sampler", "ddim")
        steps = p.fractal_ddim_steps if sampler == "ddim" else p.fractal_ddpm_steps
        edits = {SWEEP_VALUES: list(getattr(p, m.scales)),
                 "model.init_args.samples_per_class": p.fractal_samples_per_class,
                 "model.init_args.shard_size": n, "model.init_args.batch_size": n,
                 "model.init_args.sampler_kwargs.num_steps": steps, **dict(m.edits)}
        needs = ["fractal-cfg"]
        if m.guided:
            edits[guide_checkpoint(0)] = plan.product("fractal-classifier")
            needs.append("fractal-classifier")
        if m.autoguide:
            edits["model.init_args.sweep.cfg_rule.init_args.guide_checkpoint"] = plan.product("fractal-cfg-bad")
            needs.append("fractal-cfg-bad")
        names.append(plan.sample(sample_step(m.key), SECTION, m.config, f"fractal/samples_{m.key}",
                                 "fractal-cfg", edits, needs).name)
    from ..guidance.sweep import Sweep

    for f in fractal_flows(p):
        source = plan.steps[sample_step(f.method)]
        target = _sampling(methods[f.method].config)["sweep"].get("target", "cfg")
        shards = str(source.out_dir / Sweep(target).folder(f.scale))
        edits = {"data.init_args.shards": [shards], "data.init_args.predict_shards": [shards],
                 "data.init_args.batch_size": min(1024, n), "model.init_args.batch_size": n}
        if p.fractal_flow_euler_steps:
            edits.update({"model.init_args.integrator": "euler",
                          "model.init_args.integrator_kwargs": {"num_steps": p.fractal_flow_euler_steps}})
        fit, post = plan.flow(f"fractal-flow-{f.key}", SECTION, f.config, f"fractal/flow_{f.key}",
                              p.fractal_flow_steps, edits, needs=[source.name])
        names += [fit.name, post.name]
    return names


def read_samples(out_dir: Path) -> dict[float, tuple[torch.Tensor, torch.Tensor]]:
    """``{scale: (samples, labels)}`` from a predict step's manifest and shards."""
    from ..io.shards import read_manifest, read_shard

    manifest = read_manifest(out_dir)
    if manifest is None:
        raise FileNotFoundError(f"no manifest.json in {out_dir}: its predict step did not finish")
    out = {}
    for key, info in manifest["values"].items():
        target = info["config"]["target"]
        shards = [read_shard(Path(out_dir) / f"{target}_{key}" / s) for s in info["shards"]]
        out[float(key)] = (torch.cat([s.samples for s in shards]), torch.cat([s.labels for s in shards]))
    return out


def read_postprocessed(folder: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(samples after, their sources before, labels) of a folder the post-processor wrote (same order)."""
    import numpy as np

    from ..io.shards import read_shard

    paths = sorted(Path(folder).glob("shard_*.npz"))
    if not paths:
        raise FileNotFoundError(f"no post-processed shards in {folder}")
    after, before, labels = [], [], []
    for path in paths:
        with np.load(path) as z:
            source = str(z["source_file"])
        out = read_shard(path)
        after.append(out.samples.float()), labels.append(out.labels), before.append(read_shard(source).samples.float())
    return torch.cat(after), torch.cat(before), torch.cat(labels)


def move_by_density_decile(log_density: torch.Tensor, moves: torch.Tensor) -> list[float]:
    """Median move of the samples in each decile of exact log-density before the flow (lowest density first): the
    classifier-centric study's claim is that the first deciles move much more than the last."""
    edges = torch.quantile(log_density, torch.linspace(0, 1, 11, dtype=log_density.dtype))
    bins = (torch.searchsorted(edges, log_density, right=True) - 1).clamp(0, 9)
    return [float(moves[bins == d].median()) if (bins == d).any() else float("nan") for d in range(10)]


def best_at_equal_wrong_class_rate(scores: dict[str, dict], budget: float) -> list[tuple[str, str, dict]]:
    """Per method, its scale with the highest mean log-density among those whose wrong-class rate is <= ``budget``;
    ``(method, scale, scores)`` sorted best first (the variants' comparison at equal class separation)."""
    best: dict[str, tuple[str, dict]] = {}
    for method, by_scale in scores.items():
        for scale, sc in by_scale.items():
            if sc["wrong_class_fraction"] > budget:
                continue
            if method not in best or sc["mean_log_density"] > best[method][1]["mean_log_density"]:
                best[method] = (scale, sc)
    return sorted(((m, s, sc) for m, (s, sc) in best.items()), key=lambda r: -r[2]["mean_log_density"])


def scatter(ax, x, y, title):
    ax.set_axis_on()
    for cls, color in ((0, "tab:blue"), (1, "tab:red")):
        pts = x[y == cls].numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=1.5, color=color, alpha=0.6)
    ax.set_title(title, fontsize=7)
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_xlim(-1.6, 1.6), ax.set_ylim(-1.6, 1.6)


def analyse_fractal(ctx) -> tuple[SectionResult, SectionResult]:
    """(section 2: panels before and after the post-processor, section 3: the exact benchmark)."""
    from ..toy import fractal_2d
    from ..toy.exact_scores import score_samples

    p, run = ctx.preset, ctx.run_dir
    panels = SectionResult("fractal_panels", "2. 2D fractal: ground truth, CG and CFG at several scales, before and "
                                             "after the post-processor")
    bench = SectionResult("fractal_benchmark", "3. Exact-distribution benchmark on the fractal")
    mixture = fractal_2d()
    methods = [m for m in fractal_methods(p) if ctx.ok(sample_step(m.key))]
    failed = [m.label for m in fractal_methods(p) if not ctx.ok(sample_step(m.key))]
    if not methods:
        raise LookupError(ctx.failed_inputs([sample_step(m.key) for m in fractal_methods(p)]))
    samples, scores = {}, {}
    for m in methods:
        samples[m.key] = read_samples(ctx.step(sample_step(m.key)).out_dir)
        scores[m.key] = {f"{s:g}": score_samples(mixture, x, y, p.fractal_reference_per_class, **SCORING)
                         for s, (x, y) in samples[m.key].items()}
    n = p.fractal_samples_per_class
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(2 * n) % 2
    truth, _ = mixture.sample(2 * n, labels, generator=gen)
    reference = score_samples(mixture, truth, labels, p.fractal_reference_per_class, **SCORING)

    # the post-processed sets: before and after, scored the same way
    flows, flows_failed, post_samples = {}, [], {}
    for f in fractal_flows(p):
        name = f"fractal-flow-{f.key}-postprocess"
        if not ctx.ok(name) or f.method not in samples:
            flows_failed.append(f.key)
            continue
        after, before, y = read_postprocessed(ctx.step(name).out_dir / Path(ctx.step(
            f"fractal-flow-{f.key}").edits["data.init_args.shards"][0]).name)
        moves = (after.double() - before.double()).norm(dim=1)
        deciles = move_by_density_decile(mixture.log_prob(before.double(), y), moves)
        flows[f.key] = {"method": f.method, "label": next(m.label for m in methods if m.key == f.method),
                        "scale": f"{f.scale:g}", "config": f.config, "flow_steps": p.fractal_flow_steps,
                        "before": score_samples(mixture, before, y, p.fractal_reference_per_class, **SCORING),
                        "after": score_samples(mixture, after, y, p.fractal_reference_per_class, **SCORING),
                        "median_move": float(moves.median()), "median_move_by_density_decile": deciles}
        post_samples[f.key] = (before, after, y)
    cfg_scores = scores.get("cfg", {})
    budget_scale = sorted(cfg_scores, key=float)[len(cfg_scores) // 2] if cfg_scores else None
    ranking = []
    if budget_scale is not None:
        budget = cfg_scores[budget_scale]["wrong_class_fraction"]
        ranking = [{"method": m, "label": next(x.label for x in methods if x.key == m), "scale": s, **sc}
                   for m, s, sc in best_at_equal_wrong_class_rate(
                       {m.key: scores[m.key] for m in methods if m.key in ("cfg", "cg") or m.family == "variant"},
                       budget)]
    bench.numbers = {"samples_per_class": n, "reference_per_class": p.fractal_reference_per_class,
                     "scoring": SCORING, "exact_samples": reference,
                     "methods": {m.key: {"label": m.label, "family": m.family, "scales": scores[m.key]}
                                 for m in methods},
                     "methods_failed": failed, "postprocessed": flows, "postprocessed_failed": flows_failed,
                     "equal_wrong_class": {"cfg_scale": budget_scale, "ranking": ranking}}

    # section 2: panels (before) and the post-processor's before/after
    plt = pyplot()
    rows = [m for m in methods if m.key in ("cg", "cfg")]
    width = 1 + max((len(samples[m.key]) for m in rows), default=0)
    fig, axes = plt.subplots(max(1, len(rows)), width, figsize=(2.3 * width, 2.3 * max(1, len(rows))), squeeze=False)
    for r in range(max(1, len(rows))):
        for c in range(width):
            axes[r][c].set_axis_off()
    scatter(axes[0][0], truth, labels, "ground truth")
    for r, m in enumerate(rows):
        for c, (s, (x, y)) in enumerate(sorted(samples[m.key].items())):
            scatter(axes[r][c + 1], x, y, f"{m.label} s={s:g}")
    panels.numbers = {"samples_per_class": n, "methods_shown": [m.key for m in rows],
                      "scales_shown": {m.key: sorted(samples[m.key]) for m in rows},
                      "postprocessed_shown": list(flows)}
    panels.figure(save_figure(fig, run / "figures" / "fractal_panels.png"), run,
                  "2D fractal: exact samples, CG and CFG samples at several scales")
    if post_samples:
        fig, axes = plt.subplots(2, len(post_samples), figsize=(2.6 * len(post_samples), 5.2), squeeze=False)
        for c, (key, (before, after, y)) in enumerate(post_samples.items()):
            info = flows[key]
            scatter(axes[0][c], before, y, f"{info['label'][:28]} s={info['scale']}: before")
            scatter(axes[1][c], after, y, "after the post-processor")
        panels.figure(save_figure(fig, run / "figures" / "fractal_postprocessor.png"), run,
                      "2D fractal: samples before (top) and after (bottom) the nearest-neighbour rectified flow")
    if flows_failed:
        panels.markdown += [f"Post-processed sets whose steps did not finish: {', '.join(flows_failed)}.", ""]

    # section 3: the benchmark table
    header = ["method", "scale", *(title for _, title in SCORES), "after post-processor: log p / wrong class"]
    after_of = {(v["method"], v["scale"]): v["after"] for v in flows.values()}
    table = [["exact samples", "—", *(fmt(reference[k]) for k, _ in SCORES), "—"]]
    for m in methods:
        for s, sc in scores[m.key].items():
            a = after_of.get((m.key, s))
            table.append([m.label, s, *(fmt(sc[k]) for k, _ in SCORES),
                          f"{fmt(a['mean_log_density'])} / {fmt(a['wrong_class_fraction'])}" if a else "—"])
    bench.markdown = [f"Every method samples {fmt(n)} points per class from the same fractal CFG model with the same "
                      "per-sample seeds; scores are against the exact mixture (sliced W1 on "
                      f"{fmt(SCORING['num_projections'])} directions, spread and recall against "
                      f"{fmt(p.fractal_reference_per_class)} exact samples per class; the first row scores exact "
                      "samples themselves: the floor or ideal of each column). The modern CFG variants use the "
                      "settings of their shipped configs/fractal/sample_*.yaml; autoguidance's worse model is "
                      "configs/fractal/"
                      f"cfg_autoguide_bad.yaml trained {fmt(p.fractal_autoguide_bad_steps)} steps.",
                      "", *md_table(header, table)]
    if ranking:
        bench.markdown += [f"At a wrong-class rate ≤ {fmt(budget)} (plain CFG at s = {budget_scale}), the best scale "
                           "of each method by mean exact log-density:", "",
                           *md_table(["method", "scale", *(title for _, title in SCORES)],
                                     [[r["label"], r["scale"], *(fmt(r[k]) for k, _ in SCORES)] for r in ranking])]
    if flows:
        rows_ = []
        for v in flows.values():
            b, a, d = v["before"], v["after"], v["median_move_by_density_decile"]
            rows_.append([v["label"], v["scale"], fmt(b["mean_log_density"]), fmt(a["mean_log_density"]),
                          fmt(b["wrong_class_fraction"]), fmt(a["wrong_class_fraction"]), fmt(b["sliced_wasserstein"]),
                          fmt(a["sliced_wasserstein"]), fmt(d[0]), fmt(d[-1])])
        bench.markdown += [f"The nearest-neighbour rectified-flow post-processor (configs/fractal/flow_*.yaml, "
                           f"{fmt(p.fractal_flow_steps)} training steps each, trained on the set it is applied to "
                           "as in the classifier-centric study's fractal figures). The last two columns: median "
                           "move of "
                           "the samples in the lowest and the highest decile of exact log-density before the flow.",
                           "", *md_table(["set", "scale", "log p before", "log p after", "wrong before",
                                          "wrong after", "SW1 before", "SW1 after", "move, lowest decile",
                                          "move, highest decile"], rows_)]
    if failed:
        bench.markdown += [f"Methods whose sampling step did not finish (no rows): {', '.join(failed)}.", ""]
    fig, ax = plt.subplots(1, 3, figsize=(11, 3))
    for m in methods:
        xs = [float(s) for s in scores[m.key]]
        for i, (key, _) in enumerate(SCORES[:3]):
            ax[i].plot(xs, [scores[m.key][s][key] for s in scores[m.key]], "o-" if m.family == "paper" else "s--",
                       label=m.label, ms=3)
    for i, (key, title) in enumerate(SCORES[:3]):
        ax[i].axhline(reference[key], color="k", ls=":", lw=0.8)
        ax[i].set_title(title, fontsize=9)
        ax[i].set_xlabel("scale", fontsize=8)
    ax[0].legend(fontsize=5)
    bench.figure(save_figure(fig, run / "figures" / "fractal_benchmark.png"), run,
                 "fractal: exact scores vs scale for every method (dashed: the modern CFG variants; dotted line: "
                 "exact samples)")
    return panels, bench
