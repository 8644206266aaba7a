"""Section 2: the 2D fractal — ground truth, CG and CFG samples at several scales, and the post-processed sets before
and after the rectified flow; the steps and reading shared with section 3 (:mod:`.fractal_benchmark`). The fractal is
Karras et al.'s (2024, autoguidance, App. C: two interleaved trees of Gaussians), not the classifier-centric study's
variants of it whose classes are entangled to three degrees (its Fig. 4 a-c). One training seed: its denoiser costs
about 300 CPU-s in the small preset, whose seeds go to the 1D models; intervals here are over sample ids.

Steps: a CFG denoiser, the linear time-dependent classifier and autoguidance's worse model (``configs/fractal/``),
one ``predict`` per guidance method (``configs/fractal/sampling.yaml`` with a ``configs/guidance/`` file), each a
sweep over its scales, and per post-processed set (CG of the unconditional model at a weak and a large scale, CFG at
the largest scale: the classifier-centric study's Fig. 4 and 5) a ``fit`` and a ``predict`` of
``configs/fractal/flow.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from textwrap import fill

import numpy as np
import torch

from ..io.figures import pyplot
from ..io.shards import read_postprocessed
from ..io.toy_figures import scatter_framed
from ..toy import fractal_2d
from .plan import SWEEP_VALUES, Plan, guide_checkpoint, term
from ..launch.products import Products
from .section import Section, SectionResult

SAMPLING = "fractal/sampling.yaml"  # the sampling skeleton every method starts from (CFG alone)
FLOW = "fractal/flow.yaml"  # every post-processor's config


def with_guidance(name: str) -> tuple[str, str]:
    """The fractal sampling config combined with ``configs/guidance/<name>.yaml``."""
    return SAMPLING, f"guidance/{name}.yaml"


@dataclass(frozen=True)
class FractalMethod:
    key: str
    label: str
    config: str | tuple[str, ...]  # shipped configs, combined in order
    scales: str  # the preset field holding its sweep
    guided: bool = True  # reads the linear classifier
    edits: tuple = ()
    family: str = "paper"  # paper: the seed papers' methods; variant: the modern CFG variants
    autoguide: bool = False  # reads autoguidance's worse model


#: the modern CFG variants that apply to points (frequency-decoupled and the attention perturbations need images)
VARIANTS = (("interval", "CFG, guidance interval", with_guidance("cfg_interval")),
            ("rescale", "CFG rescale", with_guidance("cfg_rescale")),
            ("apg", "adaptive projected guidance", with_guidance("apg")),
            ("cfg_zero_star", "CFG-Zero*", with_guidance("cfg_zero_star")),
            ("tangential", "tangential CFG", with_guidance("tangential_cfg")),
            ("autoguidance", "autoguidance", with_guidance("autoguidance")))


def fractal_methods(preset) -> list[FractalMethod]:
    methods = [FractalMethod("cfg", "CFG", SAMPLING, "fractal_cfg_scales", guided=False),
               FractalMethod("cg", "CG of the conditional model (linear classifier)", with_guidance("cg"),
                             "fractal_guidance_scales"),
               FractalMethod("cg_uncond", "CG of the unconditional model (linear classifier)",
                             with_guidance("cg_unconditional"), "fractal_cg_flow_scales"),
               FractalMethod("cfg_plus_cg", "CFG + classifier", with_guidance("cfg_plus_cg"),
                             "fractal_cfg_plus_cg_scales"),
               FractalMethod("offtheshelf", "off-the-shelf (x0_hat)", with_guidance("offtheshelf"),
                             "fractal_guidance_scales"),
               FractalMethod("tilted", "tilted", with_guidance("tilted"), "fractal_guidance_scales"),
               FractalMethod("entropy", "entropy-adaptive", with_guidance("entropy"), "fractal_guidance_scales")]
    methods += [FractalMethod(f"divergence_{d}", f"f-divergence ({d})", with_guidance("divergence"),
                              "fractal_guidance_scales", edits=((f"{term(0)}.init_args.divergence", d),))
                for d in preset.fractal_divergences]
    methods += [FractalMethod(key, label, config, "fractal_variant_scales", guided=False, family="variant",
                              autoguide=key == "autoguidance") for key, label, config in VARIANTS]
    return methods


@dataclass(frozen=True)
class FractalFlow:
    """One post-processed set: the sampled set (method, scale) its flow is trained on and applied to."""
    key: str
    method: str
    scale: float


def fractal_flows(preset) -> list[FractalFlow]:
    weak, large = min(preset.fractal_cg_flow_scales), max(preset.fractal_cg_flow_scales)
    return [FractalFlow("cg_weak", "cg_uncond", weak), FractalFlow("cg_large", "cg_uncond", large),
            FractalFlow("cfg", "cfg", max(preset.fractal_cfg_scales))]


def sample_step(method: str) -> str:
    return f"sample-fractal-{method}"


def plan(plan: Plan) -> None:
    from ..guidance.sweep import Sweep

    p = plan.preset
    plan.fit("fractal-cfg", "fractal/cfg.yaml", "fractal/cfg", p.fractal_train_steps)
    plan.fit("fractal-classifier", "fractal/classifier.yaml", "fractal/classifier", p.fractal_classifier_steps)
    plan.fit("fractal-cfg-bad", "fractal/cfg_autoguide_bad.yaml", "fractal/cfg_autoguide_bad",
             p.fractal_autoguide_bad_steps)
    n = 2 * p.fractal_samples_per_class
    methods = {m.key: m for m in fractal_methods(p)}
    for m in methods.values():
        sampler = plan.shipped(m.config)["model"]["init_args"].get("sampler", "ddim")
        edits = {SWEEP_VALUES: list(getattr(p, m.scales)),
                 "model.init_args.samples_per_class": p.fractal_samples_per_class,
                 "model.init_args.shard_size": n, "model.init_args.batch_size": n,
                 "model.init_args.sampler_kwargs.num_steps": p.fractal_ddim_steps if sampler == "ddim"
                 else p.fractal_ddpm_steps, **dict(m.edits)}
        needs = ["fractal-cfg"]
        if m.guided:
            edits[guide_checkpoint(0)] = plan.product("fractal-classifier")
            needs.append("fractal-classifier")
        if m.autoguide:
            edits["model.init_args.sweep.cfg_rule.init_args.guide_checkpoint"] = plan.product("fractal-cfg-bad")
            needs.append("fractal-cfg-bad")
        plan.sample(sample_step(m.key), m.config, f"fractal/samples_{m.key}", "fractal-cfg", edits, needs)
    for f in fractal_flows(p):
        source = plan.steps[sample_step(f.method)]
        target = plan.shipped(methods[f.method].config)["model"]["init_args"]["sweep"].get("target", "cfg")
        shards = str(source.out_dir / Sweep(target).folder(f.scale))
        edits = {"data.init_args.shards": [shards], "data.init_args.predict_shards": [shards],
                 "data.init_args.batch_size": min(1024, n), "model.init_args.batch_size": n}
        if p.fractal_flow_euler_steps:
            edits.update({"model.init_args.integrator": "euler",
                          "model.init_args.integrator_kwargs": {"num_steps": p.fractal_flow_euler_steps}})
        plan.flow(f"fractal-flow-{f.key}", FLOW, f"fractal/flow_{f.key}", p.fractal_flow_steps, edits,
                  needs=[source.name])


# ---- reading -----------------------------------------------------------------------------------------------------
def read_all(products: Products):
    """(the methods whose sampling finished, their samples, the labels of the failed ones, the post-processed sets
    ``{flow key: (flow, after, before, labels)}``, the keys of the unfinished ones, exact samples and labels)."""
    p = products.preset
    methods = [m for m in fractal_methods(p) if products.ok(sample_step(m.key))]
    failed = [m.label for m in fractal_methods(p) if not products.ok(sample_step(m.key))]
    if not methods:
        raise LookupError(products.failed_inputs([sample_step(m.key) for m in fractal_methods(p)]))
    samples = {m.key: products.samples(sample_step(m.key)) for m in methods}
    flows, flows_failed = {}, []
    for f in fractal_flows(p):
        name = f"fractal-flow-{f.key}"
        if not products.ok(f"{name}-postprocess") or f.method not in samples:
            flows_failed.append(f.key)
            continue
        source = Path(products.step(name).edits["data.init_args.shards"][0]).name
        flows[f.key] = (f, *read_postprocessed(products.step(f"{name}-postprocess").out_dir / source))
    n = p.fractal_samples_per_class
    labels = torch.arange(2 * n) % 2
    truth, _ = fractal_2d().sample(2 * n, labels, generator=torch.Generator().manual_seed(1))
    return methods, samples, failed, flows, flows_failed, truth, labels


def label_of(methods, key: str) -> str:
    return next(m.label for m in methods if m.key == key)


# ---- section 2 ----------------------------------------------------------------------------------------------------
def analyse_panels(products: Products, res: SectionResult) -> None:
    methods, samples, _, flows, flows_failed, truth, labels = read_all(products)
    plt = pyplot()
    rows = [m for m in methods if m.key in ("cg_uncond", "cg", "cfg")]
    width = 1 + max((len(samples[m.key]) for m in rows), default=0)
    fig = plt.figure(figsize=(2.4 * width, 2.5 * max(1, len(rows))))
    for sub, m in zip(np.atleast_1d(fig.subfigures(max(1, len(rows)), 1)), rows or [None]):
        scales = sorted(samples[m.key].items()) if m else []
        axes = np.atleast_1d(sub.subplots(1, 1 + len(scales)))
        scatter_framed(axes[0], truth, labels, "exact samples")
        for ax, (s, (x, y)) in zip(axes[1:], scales):
            scatter_framed(ax, x, y, f"{fill(m.label, 30)}\nscale {s:g}")
    res.numbers = {"samples_per_class": products.preset.fractal_samples_per_class,
                   "methods_shown": [m.key for m in rows],
                   "scales_shown": {m.key: sorted(samples[m.key]) for m in rows}, "postprocessed_shown": list(flows)}
    res.markdown = ["The fractal is Karras et al.'s (the autoguidance paper's App. C): two classes, each a tree of "
                    "elongated Gaussians, interleaved. The classifier-centric study's fractal figures (its Fig. 4 "
                    "a-c) use variants of it whose classes are entangled to three degrees; we run the one fractal. "
                    "Each panel is framed on its own points (0.5-99.5 % quantiles; the points beyond are counted in "
                    "its title).", ""]
    res.figure(fig, "fractal_panels.png", "2D fractal: exact samples beside CG of the unconditional model, CG and CFG "
                                          "samples at each scale (blue: class 0, red: class 1)")
    if flows:
        fig, axes = plt.subplots(2, len(flows), figsize=(2.8 * len(flows), 5.6), squeeze=False)
        for c, (f, after, before, y) in enumerate(flows.values()):
            scatter_framed(axes[0][c], before, y, f"{fill(label_of(methods, f.method), 30)}\nscale {f.scale:g}: before")
            scatter_framed(axes[1][c], after, y, "after the post-processor")
        res.figure(fig, "fractal_postprocessor.png", "2D fractal: samples before (top) and after (bottom) the "
                   "nearest-neighbour rectified flow, each panel framed on its points")
    if flows_failed:
        res.markdown += [f"Post-processed sets whose steps did not finish: {', '.join(flows_failed)}.", ""]


PRESET_FIELDS = tuple(f"fractal_{k}" for k in (
    "train_steps", "classifier_steps", "samples_per_class", "ddim_steps", "ddpm_steps", "cfg_scales",
    "guidance_scales", "cfg_plus_cg_scales", "divergences", "reference_per_class", "variant_scales",
    "autoguide_bad_steps", "cg_flow_scales", "flow_steps", "flow_euler_steps"))
DATA = "the exact 2D fractal mixture (embedded)"
SECTION = Section("fractal_panels", "2. 2D fractal: ground truth, CG and CFG at several scales, before and after the "
                                   "post-processor", DATA, PRESET_FIELDS, plan, analyse_panels)
