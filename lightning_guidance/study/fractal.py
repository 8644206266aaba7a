"""Sections 2 and 3: the 2D fractal (Karras et al. 2024 toy) — sample panels, and every guidance method at every scale
scored against the exact class-conditional distribution (``toy.exact_scores``), same seeds for every method.

Steps: a CFG denoiser and the linear time-dependent classifier (``configs/fractal/``), then one ``predict`` per
guidance method (the shipped ``configs/fractal/sample_*.yaml``), each a sweep over its scales.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from .plan import CONFIGS, SWEEP_VALUES, Plan, guide_checkpoint, term
from .results import SectionResult, fmt, md_table, pyplot, save_figure

SECTION = "2D fractal"
TERM0 = term(0)
#: the exact scores' settings: sliced W1 (the figure's "sliced W1") on 64 directions, seed 0
SCORING = {"seed": 0, "num_projections": 64, "p": 1}


@dataclass(frozen=True)
class FractalMethod:
    key: str
    label: str
    config: str
    scales: str  # the preset field holding its sweep
    guided: bool = True
    edits: tuple = ()


def fractal_methods(preset) -> list[FractalMethod]:
    methods = [FractalMethod("cfg", "CFG", "fractal/sample_cfg.yaml", "fractal_cfg_scales", guided=False),
               FractalMethod("cg", "CG (linear classifier, x_t)", "fractal/sample_cg.yaml", "fractal_guidance_scales"),
               FractalMethod("cfg_plus_cg", "CFG + classifier", "fractal/sample_cfg_plus_cg.yaml",
                             "fractal_cfg_plus_cg_scales"),
               FractalMethod("offtheshelf", "off-the-shelf (x0_hat)", "fractal/sample_offtheshelf.yaml",
                             "fractal_guidance_scales"),
               FractalMethod("tilted", "tilted", "fractal/sample_tilted.yaml", "fractal_guidance_scales"),
               FractalMethod("entropy", "entropy-adaptive", "fractal/sample_entropy.yaml", "fractal_guidance_scales")]
    methods += [FractalMethod(f"divergence_{d}", f"f-divergence ({d})", "fractal/sample_divergence.yaml",
                              "fractal_guidance_scales", edits=((f"{TERM0}.init_args.divergence", d),))
                for d in preset.fractal_divergences]
    return methods


def _sampler_of(config: str) -> str:
    cfg = yaml.safe_load((CONFIGS / config).read_text())
    return cfg["model"]["init_args"].get("sampler", "ddim")


def plan_fractal(plan: Plan) -> list[str]:
    p = plan.preset
    plan.fit("fractal-cfg", SECTION, "fractal/cfg.yaml", "fractal/cfg", p.fractal_train_steps)
    plan.fit("fractal-classifier", SECTION, "fractal/classifier.yaml", "fractal/classifier", p.fractal_classifier_steps)
    names = ["fractal-cfg", "fractal-classifier"]
    n = 2 * p.fractal_samples_per_class
    for m in fractal_methods(p):
        sampler = _sampler_of(m.config)
        steps = p.fractal_ddim_steps if sampler == "ddim" else p.fractal_ddpm_steps
        edits = {SWEEP_VALUES: list(getattr(p, m.scales)),
                 "model.init_args.samples_per_class": p.fractal_samples_per_class,
                 "model.init_args.shard_size": n, "model.init_args.batch_size": n,
                 "model.init_args.sampler_kwargs.num_steps": steps, **dict(m.edits)}
        needs = ["fractal-cfg"]
        if m.guided:
            edits[guide_checkpoint(0)] = plan.product("fractal-classifier")
            needs.append("fractal-classifier")
        names.append(plan.sample(f"sample-fractal-{m.key}", SECTION, m.config, f"fractal/samples_{m.key}",
                                 "fractal-cfg", edits, needs).name)
    return names


def read_samples(out_dir: Path) -> dict[float, tuple[torch.Tensor, torch.Tensor]]:
    """``{scale: (samples, labels)}`` from a predict step's manifest and shards."""
    from ..io.shards import read_manifest, read_shard

    manifest = read_manifest(out_dir)
    if manifest is None:
        raise FileNotFoundError(f"no manifest.json in {out_dir}: its predict step did not finish")
    out = {}
    for key, info in manifest["scales"].items():
        target = info["config"]["scale_target"]
        shards = [read_shard(Path(out_dir) / f"{target}_{key}" / s) for s in info["shards"]]
        out[float(key)] = (torch.cat([s.samples for s in shards]), torch.cat([s.labels for s in shards]))
    return out


def analyse_fractal(ctx) -> tuple[SectionResult, SectionResult]:
    """(section 2: panels, section 3: the exact benchmark)."""
    from ..toy import fractal_2d
    from ..toy.exact_scores import score_samples

    p, run = ctx.preset, ctx.run_dir
    panels = SectionResult("fractal_panels", "2. 2D fractal: ground truth, CG and CFG at several scales")
    bench = SectionResult("fractal_benchmark", "3. Exact-distribution benchmark on the fractal")
    mixture = fractal_2d()
    post = ctx.postprocessor_available()
    methods = [m for m in fractal_methods(p) if ctx.ok(f"sample-fractal-{m.key}")]
    failed = [m.label for m in fractal_methods(p) if not ctx.ok(f"sample-fractal-{m.key}")]
    if not methods:
        raise LookupError(ctx.failed_inputs([f"sample-fractal-{m.key}" for m in fractal_methods(p)]))
    samples, scores = {}, {}
    for m in methods:
        samples[m.key] = read_samples(ctx.step(f"sample-fractal-{m.key}").out_dir)
        scores[m.key] = {f"{s:g}": score_samples(mixture, x, y, p.fractal_reference_per_class, **SCORING)
                         for s, (x, y) in samples[m.key].items()}
    n = p.fractal_samples_per_class
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(2 * n) % 2
    truth, _ = mixture.sample(2 * n, labels, generator=gen)
    reference = score_samples(mixture, truth, labels, p.fractal_reference_per_class, **SCORING)
    bench.numbers = {"samples_per_class": n, "reference_per_class": p.fractal_reference_per_class,
                     "exact_samples": reference,
                     "methods": {m.key: {"label": m.label, "scales": scores[m.key]} for m in methods},
                     "methods_failed": failed, "postprocessor": "built" if post else "not built yet"}

    # section 2: panels
    plt = pyplot()
    rows = [m for m in methods if m.key in ("cg", "cfg")]
    width = 1 + max((len(samples[m.key]) for m in rows), default=0)
    fig, axes = plt.subplots(max(1, len(rows)), width, figsize=(2.3 * width, 2.3 * max(1, len(rows))), squeeze=False)
    for r in range(max(1, len(rows))):
        for c in range(width):
            axes[r][c].set_axis_off()
    def scatter(ax, x, y, title):  # noqa: E306
        ax.set_axis_on()
        for cls, color in ((0, "tab:blue"), (1, "tab:red")):
            pts = x[y == cls].numpy()
            ax.scatter(pts[:, 0], pts[:, 1], s=1.5, color=color, alpha=0.6)
        ax.set_title(title, fontsize=7)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_xlim(-1.6, 1.6), ax.set_ylim(-1.6, 1.6)
    scatter(axes[0][0], truth, labels, "ground truth")
    for r, m in enumerate(rows):
        for c, (s, (x, y)) in enumerate(sorted(samples[m.key].items())):
            scatter(axes[r][c + 1], x, y, f"{m.label} s={s:g}")
    panels.numbers = {"samples_per_class": n, "methods_shown": [m.key for m in rows],
                      "scales_shown": {m.key: sorted(samples[m.key]) for m in rows},
                      "postprocessor": bench.numbers["postprocessor"]}
    panels.figure(save_figure(fig, run / "figures" / "fractal_panels.png"), run,
                  "2D fractal: exact samples, CG and CFG samples at several scales")
    if not post:
        panels.markdown.append("After the postprocessor: not built yet (the rectified-flow postprocessor has not "
                               "landed in this checkout), so only the before panels are shown.")
        panels.markdown.append("")

    # section 3: the benchmark table
    header = ["method", "scale", "mean log p(x|y)", "wrong class", "sliced W1", "after postprocessor"]
    table = [["exact samples", "—", fmt(reference["mean_log_density"]), fmt(reference["wrong_class_fraction"]),
              fmt(reference["sliced_wasserstein"]), "—"]]
    for m in methods:
        for s, sc in scores[m.key].items():
            table.append([m.label, s, fmt(sc["mean_log_density"]), fmt(sc["wrong_class_fraction"]),
                          fmt(sc["sliced_wasserstein"]), "not built yet" if not post else "—"])
    bench.markdown = [f"Every method samples {fmt(n)} points per class with the same per-sample seeds; scores are "
                      f"against the exact mixture (sliced W1 against {fmt(p.fractal_reference_per_class)} exact "
                      "samples per class; the first row scores exact samples themselves: the floor of each column).",
                      "", *md_table(header, table)]
    if failed:
        bench.markdown += [f"Methods whose sampling step did not finish (no rows): {', '.join(failed)}.", ""]
    fig, ax = plt.subplots(1, 3, figsize=(11, 3))
    for m in methods:
        xs = [float(s) for s in scores[m.key]]
        for i, key in enumerate(("mean_log_density", "wrong_class_fraction", "sliced_wasserstein")):
            ax[i].plot(xs, [scores[m.key][s][key] for s in scores[m.key]], "o-", label=m.label, ms=3)
    for i, (key, title) in enumerate((("mean_log_density", "mean log p(x|y)"), ("wrong_class_fraction", "wrong class"),
                                      ("sliced_wasserstein", "sliced W1"))):
        ax[i].axhline(reference[key], color="k", ls=":", lw=0.8)
        ax[i].set_title(title, fontsize=9)
        ax[i].set_xlabel("scale", fontsize=8)
    ax[0].legend(fontsize=6)
    bench.figure(save_figure(fig, run / "figures" / "fractal_benchmark.png"), run,
                 "fractal: exact scores vs scale for every method (dotted: exact samples)")
    return panels, bench
