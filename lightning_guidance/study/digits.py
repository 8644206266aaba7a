"""Sections 4 to 8 on the image family (scikit-learn's 8x8 digits; MNIST or CIFAR-10 in the ``full`` presets).

4. CFG: a fine scale sweep graded by the judge (``fd_digits``, precision, recall, judge accuracy).
5. Classifier guidance mirroring EluCD's tables: the noisy classifier on ``x_t`` vs the clean (off-the-shelf)
   classifier on ``x0_hat``; ablations of the denoised input (detached vs through the denoiser), tau2/tau1 and the
   sine boost gamma at one guidance scale; CFG + classifier vs CFG alone.
6. Calibration and regularised guidance, mirroring the calibration paper: the noisy classifier before and after
   the Smooth-ECE fine-tune, with a lambda = 0 control (the same fine-tune without the calibration term), each used
   for guidance; tilted, entropy-adaptive and every f-divergence guidance side by side.
7. The one-for-all-scales rectified-flow post-processor: CFG shards at the training scales, one flow
   (``configs/digits/flow.yaml``), unseen scales graded before and after it.
8. Integral ECE vs ``fd_digits`` across the classifier-guided runs, with Spearman's rank correlation.

Every sampling run is a ``predict`` of ``configs/digits/sampling.yaml`` (with a ``configs/guidance/`` file) and a
``test`` of its shards with
``configs/digits/grade_with_judge.yaml``; the report reads the ``metrics_table.json`` each test wrote.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .plan import DELETE, SWEEP_VALUES, Plan, Step, guide_checkpoint, term
from .results import SectionResult, fmt, md_table, pyplot, save_figure

TERM0 = term(0)
S_CFG, S_CG, S_CAL = "digits CFG", "digits classifier guidance", "digits calibration"
S_POST = "digits post-processor"


def image_edits(preset, kind: str) -> dict:
    """Swap the digits data for the ``full`` presets' dataset (``kind``: fit | calibrate | grade | flow).

    The datamodule's class and its ``data_shape`` come from ``preset.image_datamodule()``; the embedded digits need
    no edit.
    """
    module = preset.image_datamodule()
    if module is None:
        return {}
    data = {"class_path": f"{module.__module__}.{module.__qualname__}",
            "init_args": {"root": "data", "batch_size": 128, "seed": 0, "num_workers": 4}}
    shape = list(module.data_shape)
    if kind == "calibrate":
        return {"data.init_args.data": data}
    if kind == "grade":
        return {"data": data}
    if kind == "flow":
        return {"data.init_args.real": data, "model.init_args.net.init_args.data_shape": shape}
    return {"data": data, "model.init_args.net.init_args.data_shape": shape}


@dataclass(frozen=True)
class Run:
    """One guided sampling run: its step names and what it is."""
    key: str
    label: str
    section: str
    classifier: str | None  # the fit step of its guide (None: CFG only)

    @property
    def sample(self) -> str:
        return f"sample-digits-{self.key}"

    @property
    def grade(self) -> str:
        return f"grade-digits-{self.key}"


#: EluCD's DDPM reference settings (app. C): every ablation changes one of them
REFERENCE = {"tau1": 1.0, "tau2": 0.5, "gamma": 0.3}
#: the Softplus betas of EluCD's smoothness ablation (not run here: see section 5)
SOFTPLUS_BETAS = (8.0, 5.0, 3.0)
ECE_BINS = 10


def offtheshelf_key(tau2: float, gamma: float, through: bool) -> str:
    return f"ots-tau{tau2:g}-gamma{gamma:g}" + ("-through" if through else "")


def plan_digits(plan: Plan, sections: set[str]) -> dict[str, Run]:
    p = plan.preset
    fit_data, grade_data = image_edits(p, "fit"), image_edits(p, "grade")
    plan.fit("digits-judge", S_CFG, "digits/judge.yaml", "digits/judge", p.digits_judge_steps, fit_data)
    plan.fit("digits-cfg", S_CFG, "digits/cfg.yaml", "digits/cfg", p.digits_train_steps,
             {**fit_data, "model.init_args.net.init_args.model_channels": p.digits_model_channels,
              "trainer.callbacks[SampleGrid]": DELETE})
    runs: dict[str, Run] = {}
    n = p.digits_samples_per_class
    batch = 10 * n

    def run(key: str, label: str, section: str, config: str, scales, classifier: str | None,
            edits: dict | None = None, ddpm: bool = True) -> Run:
        e = {SWEEP_VALUES: [float(s) for s in scales], "model.init_args.samples_per_class": n,
             "model.init_args.shard_size": batch, "model.init_args.batch_size": batch}
        e["model.init_args.sampler"] = "ddpm" if ddpm else "ddim"
        e["model.init_args.sampler_kwargs"] = ({"num_steps": p.digits_ddpm_steps} if ddpm else
                                               {"num_steps": p.digits_ddim_steps, "eta": 0.0})
        needs = ["digits-cfg"]
        if classifier:
            e[guide_checkpoint(0)] = plan.product(classifier)
            needs.append(classifier)
        e.update(edits or {})
        r = Run(key, label, section, classifier)
        sample = plan.sample(r.sample, section, config, f"digits/samples_{key}", "digits-cfg", e, needs)
        plan.grade(sample, "digits-judge", grade_data)
        runs[key] = r
        return r

    guided_scales = sorted({*p.cg_scales, p.ablation_scale})
    run("cfg", "CFG", S_CFG, "digits/sampling.yaml", p.cfg_fine_scales, None, ddpm=False)
    if sections & {"digits_cg", "digits_calibration", "ece_vs_fd", "quality_vs_scale"}:
        plan.fit("digits-classifier", S_CG, "digits/classifier.yaml", "digits/classifier", p.digits_classifier_steps,
                 {**fit_data, "model.init_args.net.init_args.model_channels": p.digits_model_channels})
        plan.fit("digits-clean", S_CG, "digits/clean_classifier.yaml", "digits/clean_classifier", p.digits_clean_steps,
                 {**fit_data, "model.init_args.net.init_args.model_channels": p.digits_model_channels})
        run("cg-noisy", "CG, noisy classifier on x_t", S_CG, ("digits/sampling.yaml", "guidance/cg.yaml"), guided_scales,
            "digits-classifier")
        plain = {f"{TERM0}.init_args.tau2": 1.0, f"{TERM0}.init_args.sine_gamma": 0.0}
        run("cg-clean", "CG, clean classifier on x0_hat", S_CG, ("digits/sampling.yaml", "guidance/offtheshelf.yaml"), guided_scales,
            "digits-clean", plain)
    if sections & {"digits_cg", "ece_vs_fd"}:
        ref_tau, ref_gamma = REFERENCE["tau2"], REFERENCE["gamma"]
        settings = [(t, ref_gamma, False) for t in p.tau_ratios] + [(ref_tau, g, False) for g in p.sine_gammas]
        settings.append((ref_tau, ref_gamma, True))
        for tau2, gamma, through in settings:
            key = offtheshelf_key(tau2, gamma, through)
            if key in runs:
                continue
            label = (f"off-the-shelf, tau2/tau1={tau2:g}, gamma={gamma:g}"
                     + (", through the denoiser" if through else ""))
            run(key, label, S_CG, ("digits/sampling.yaml", "guidance/offtheshelf.yaml"), [p.ablation_scale], "digits-clean",
                {f"{TERM0}.init_args.tau2": tau2, f"{TERM0}.init_args.sine_gamma":
                 gamma, f"{TERM0}.init_args.through_denoiser": through})
        run("cfg-plus-cg", "CFG + clean classifier", S_CG, ("digits/sampling.yaml", "guidance/cfg_plus_cg.yaml"), p.cfg_plus_cg_scales,
            "digits-clean", ddpm=False)
    if sections & {"digits_calibration", "ece_vs_fd", "quality_vs_scale"}:
        cal_data = image_edits(p, "calibrate")
        for key, weight in (("digits-calibrated", 1.0), ("digits-calibrated-lambda0", 0.0)):
            plan.fit(key, S_CAL, "digits/calibrate.yaml", key.replace("digits-", "digits/"), None,
                     {**cal_data, "trainer.max_epochs": p.calibration_epochs,
                      "model.init_args.checkpoint": plan.product("digits-classifier"),
                      "trainer.check_val_every_n_epoch": p.calibration_epochs,
                      "model.init_args.smooth_ece_weight": weight}, needs=["digits-classifier"],
                     product="checkpoints/calibrated_classifier.ckpt")
        run("cg-calibrated", "CG, Smooth-ECE fine-tuned classifier", S_CAL, ("digits/sampling.yaml", "guidance/cg.yaml"), guided_scales,
            "digits-calibrated")
        run("cg-lambda0", "CG, fine-tuned with lambda = 0 (control)", S_CAL, ("digits/sampling.yaml", "guidance/cg.yaml"), guided_scales,
            "digits-calibrated-lambda0")
        run("tilted", "tilted (clean classifier)", S_CAL, ("digits/sampling.yaml", "guidance/tilted.yaml"), guided_scales, "digits-clean")
        run("entropy", "entropy-adaptive (clean classifier)", S_CAL, ("digits/sampling.yaml", "guidance/entropy.yaml"), guided_scales,
            "digits-clean")
        for d in p.divergences:
            run(f"divergence-{d}", f"f-divergence {d} (clean classifier)", S_CAL, ("digits/sampling.yaml", "guidance/divergence.yaml"),
                guided_scales, "digits-clean", {f"{TERM0}.init_args.divergence": d})
    if "digits_postprocessor" in sections:
        plan_postprocessor(plan, run)
    return runs


#: the names of section 7's steps (the before/after grades are read by the section)
FLOW_TRAIN, FLOW_FIT, FLOW_AFTER = "sample-digits-flow-train", "digits-flow", "grade-digits-flow-unseen-after"


def plan_postprocessor(plan: Plan, run) -> None:
    """Section 7: CFG shards at the training scales (other seeds), one flow for all of them
    (``configs/digits/flow.yaml``), CFG shards at unseen scales graded before and after the flow."""
    from ..guidance.sweep import Sweep

    p = plan.preset
    ddim = {"model.init_args.sampler": "ddim",
            "model.init_args.sampler_kwargs": {"num_steps": p.digits_ddim_steps, "eta": 0.0}}
    per_scale = 10 * p.flow_train_samples_per_class
    train = plan.sample(FLOW_TRAIN, S_POST, ("digits/sampling.yaml", "digits/flow_train_samples.yaml"), "digits/samples_flow_train",
                        "digits-cfg", {SWEEP_VALUES: [float(s) for s in p.flow_train_scales],
                                       "model.init_args.samples_per_class": p.flow_train_samples_per_class,
                                       "model.init_args.shard_size": per_scale, "model.init_args.batch_size": per_scale,
                                       **ddim}, ["digits-cfg"])
    unseen = run("flow-unseen", "CFG at unseen scales, before the post-processor", S_POST,
                 "digits/sampling.yaml", p.flow_unseen_scales, None, ddpm=False)
    unseen_sample = plan.steps[unseen.sample]
    folders = lambda step, scales: [str(step.out_dir / Sweep("cfg").folder(s)) for s in scales]  # noqa: E731
    edits = {**image_edits(p, "flow"), "model.init_args.net.init_args.model_channels": p.digits_model_channels,
             "data.init_args.shards": folders(train, p.flow_train_scales),
             "data.init_args.predict_shards": folders(unseen_sample, p.flow_unseen_scales),
             "data.init_args.batch_size": min(128, per_scale * len(p.flow_train_scales)),
             "model.init_args.integrator": "euler",
             "model.init_args.integrator_kwargs": {"num_steps": p.flow_euler_steps}}
    _, post = plan.flow(FLOW_FIT, S_POST, "digits/flow.yaml", "digits/flow", p.flow_steps, edits,
                        needs=[train.name, unseen_sample.name])
    before = plan.steps[unseen.grade]
    e = {**before.edits, "model.init_args.output_dir": str(post.out_dir), "trainer.default_root_dir": str(post.out_dir)}
    plan.add(Step(FLOW_AFTER, S_POST, "test", list(before.configs), e, [*before.needs, post.name],
                  str(post.out_dir / "metrics_table.json")))


# ---- reading -----------------------------------------------------------------------------------------------------
METRICS = ("fd_digits", "precision", "recall", "judge_accuracy")


def read_table(step: Step) -> dict:
    """``{"scales": {"2": {metric: value}}, "real": {...}, "fd_name": ...}`` from a test step's metrics_table.json."""
    table = json.loads(Path(step.product).read_text())
    fd = table["fd_name"]
    out = {"fd_name": fd, "num_samples": table["num_samples_per_value"], "scales": {}}
    for row in table["rows"]:
        m = row["metrics"]
        out["scales"][f"{row['value']:g}"] = {"fd_digits" if k == fd else k: float(v) for k, v in m.items()}
    out["real"] = {("fd_digits" if k == fd else k): float(v) for k, v in table["real"].items()}
    return out


def run_table(runs: list[Run], tables: dict[str, dict], scale_name: str = "scale") -> list[str]:
    header = ["run", scale_name, *METRICS]
    rows = []
    for r in runs:
        for s, m in tables[r.key]["scales"].items():
            rows.append([r.label, s, *(fmt(m.get(k)) for k in METRICS)])
    return md_table(header, rows)


def best(table: dict, key: str = "fd_digits", exclude_zero: bool = False) -> tuple[float, float]:
    """(scale, value) of the lowest ``key`` over a run's scales."""
    items = [(float(s), m[key]) for s, m in table["scales"].items() if not (exclude_zero and float(s) == 0)]
    return min(items, key=lambda kv: kv[1])


# ---- analysis ----------------------------------------------------------------------------------------------------
def analyse_digits(ctx, runs: dict[str, Run]) -> dict[str, SectionResult]:
    """Sections 4 to 8; one that raises is marked failed with the error, the others still render."""
    tables = {}
    for k, r in runs.items():
        if ctx.ok(r.grade):
            try:
                tables[k] = read_table(ctx.step(r.grade))
            except (OSError, KeyError, ValueError):
                pass
    out: dict[str, SectionResult] = {}
    for key, fn in (("digits_cfg", section_cfg), ("digits_cg", section_cg), ("digits_calibration", section_calibration),
                    ("digits_postprocessor", section_postprocessor), ("ece_vs_fd", section_ece_vs_fd)):
        if key not in ctx.sections:
            continue
        try:
            out[key] = fn(ctx, runs, tables)
        except Exception as err:  # noqa: BLE001 - reported; the other sections still render
            out[key] = SectionResult(key, SECTION_TITLES[key], "failed", f"{type(err).__name__}: {err}")
    return out


SECTION_TITLES = {
    "digits_cfg": "4. Digits, classifier-free guidance: a fine scale sweep",
    "digits_cg": "5. Digits, classifier guidance mirroring EluCD's tables",
    "digits_calibration": "6. Digits, calibration and regularised guidance",
    "digits_postprocessor": "7. Digits, the one-for-all-scales postprocessor",
    "ece_vs_fd": "8. Integral ECE vs fd_digits across the classifier-guided runs",
}


def section_cfg(ctx, runs, tables) -> SectionResult:
    p, run_dir, plt = ctx.preset, ctx.run_dir, pyplot()
    res = SectionResult("digits_cfg", "4. Digits, classifier-free guidance: a fine scale sweep")
    if "cfg" not in tables:
        res.status, res.reason = "failed", ctx.failed_inputs([runs["cfg"].grade])
    else:
        t = tables["cfg"]
        s_best, fd_best = best(t)
        res.numbers = {"table": t, "best_scale": s_best, "best_fd_digits": fd_best,
                       "samples_per_scale": t["num_samples"], "ddim_steps": p.digits_ddim_steps}
        scales = [float(s) for s in t["scales"]]
        fig, ax = plt.subplots(1, 2, figsize=(9, 3))
        ax[0].plot(scales, [m["fd_digits"] for m in t["scales"].values()], "o-")
        ax[0].set_title("fd_digits (lower is better)", fontsize=9)
        for k in ("precision", "recall", "judge_accuracy"):
            ax[1].plot(scales, [m[k] for m in t["scales"].values()], "o-", label=k)
        ax[1].legend(fontsize=7)
        for a in ax:
            a.set_xlabel("CFG scale s (1 = conditional)", fontsize=8)
        res.figure(save_figure(fig, run_dir / "figures" / "digits_cfg_sweep.png"), run_dir,
                   "digits: CFG scale sweep")
        res.markdown = [f"DDIM with {fmt(p.digits_ddim_steps)} steps, {fmt(t['num_samples'])} samples per scale. "
                        f"Lowest fd_digits {fmt(fd_best)} at s = {fmt(s_best)}; the judge on real held-out "
                        f"images: precision {fmt(t['real'].get('precision'))}, judge accuracy "
                        f"{fmt(t['real'].get('judge_accuracy'))}.", "", *res.markdown,
                        *run_table([runs["cfg"]], tables, "CFG scale")]
    return res


def section_cg(ctx, runs, tables) -> SectionResult:
    p, run_dir, plt = ctx.preset, ctx.run_dir, pyplot()
    res = SectionResult("digits_cg", "5. Digits, classifier guidance mirroring EluCD's tables")
    want = [r for r in runs.values() if r.section == S_CG]
    have = [r for r in want if r.key in tables]
    if not have:
        res.status, res.reason = "failed", ctx.failed_inputs([r.grade for r in want])
    else:
        res.numbers = {"runs": {r.key: {"label": r.label, **tables[r.key]} for r in have},
                       "ablation_scale": p.ablation_scale, "ddpm_steps": p.digits_ddpm_steps,
                       "reference": REFERENCE, "softplus_betas": list(SOFTPLUS_BETAS),
                       "softplus_beta": "every digits classifier of the suite uses SiLU, which has no ReLU for the "
                                        "Softplus swap to replace, so this ablation is not run"}
        missing = [r.label for r in want if r.key not in tables]
        s_abl = f"{p.ablation_scale:g}"

        def at_abl(key):
            return tables[key]["scales"].get(s_abl) if key in tables else None

        blocks = []
        rt, rg = REFERENCE["tau2"], REFERENCE["gamma"]
        compare = [("cg-noisy", "noisy classifier, x_t"), ("cg-clean", "clean classifier, x0_hat (detached)"),
                   (offtheshelf_key(rt, rg, False),
                    f"off-the-shelf reference (tau2/tau1 = {fmt(rt)}, gamma = {fmt(rg)})"),
                   (offtheshelf_key(rt, rg, True), "reference, gradient through the denoiser")]
        rows = [[label, *(fmt(at_abl(k).get(m)) for m in METRICS)] for k, label in compare if at_abl(k)]
        blocks += ["Classifier and its input, at guidance scale " + s_abl + ":", "",
                   *md_table(["guide", *METRICS], rows)]
        rows = [[fmt(t), *(fmt(at_abl(offtheshelf_key(t, rg, False)).get(m)) for m in METRICS)]
                for t in p.tau_ratios if at_abl(offtheshelf_key(t, rg, False))]
        blocks += [f"tau2/tau1 (tau1 = {fmt(REFERENCE['tau1'])}, gamma = {fmt(rg)}):", "",
                   *md_table(["tau2/tau1", *METRICS], rows)]
        rows = [[fmt(g), *(fmt(at_abl(offtheshelf_key(rt, g, False)).get(m)) for m in METRICS)]
                for g in p.sine_gammas if at_abl(offtheshelf_key(rt, g, False))]
        blocks += [f"Sine boost gamma (tau2/tau1 = {fmt(rt)}):", "", *md_table(["gamma", *METRICS], rows)]
        betas = ", ".join(["ReLU", *(fmt(b) for b in SOFTPLUS_BETAS)])
        blocks += [f"Softplus beta ∈ {{{betas}}}: " + res.numbers["softplus_beta"] + ".", ""]
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
            fig, ax = plt.subplots(figsize=(4.5, 3))
            for r in sweep:
                t = tables[r.key]["scales"]
                ax.plot([float(s) for s in t], [m["fd_digits"] for m in t.values()], "o-", label=r.label)
            ax.set_xlabel("guidance scale", fontsize=8), ax.set_ylabel("fd_digits", fontsize=8)
            ax.legend(fontsize=7)
            res.figure(save_figure(fig, run_dir / "figures" / "digits_cg_noisy_vs_clean.png"), run_dir,
                       "digits: noisy vs clean classifier guidance")
        res.markdown = [f"DDPM with {fmt(p.digits_ddpm_steps)} steps; every ablation at guidance scale "
                        f"{fmt(p.ablation_scale)} with the same seeds.", "", *blocks, *res.markdown,
                        *run_table(have, tables)]
        if missing:
            res.markdown += [f"Runs whose steps failed (no rows): {', '.join(missing)}.", ""]
    return res


def section_calibration(ctx, runs, tables) -> SectionResult:
    p, run_dir, plt = ctx.preset, ctx.run_dir, pyplot()
    res = SectionResult("digits_calibration", "6. Digits, calibration and regularised guidance")
    want = [r for r in runs.values() if r.section == S_CAL]
    have = [r for r in want if r.key in tables]
    cal = {}
    for key in ("digits-calibrated", "digits-calibrated-lambda0"):
        if ctx.ok(key):
            info = json.loads((ctx.step(key).out_dir.parent / "metrics_table.json").read_text())
            if info.get("before") and info.get("after"):
                cal[key] = info
    if not have and not cal:
        res.status, res.reason = "failed", ctx.failed_inputs([r.grade for r in want] + list(cal))
    else:
        res.numbers = {"fine_tune": cal, "runs": {r.key: {"label": r.label, **tables[r.key]} for r in have}}
        blocks = []
        if cal:
            rows = []
            first = next(iter(cal.values()))
            names = [k for k in ("accuracy", "ece", "smooth_ece") if k in first.get("before", {})]
            rows.append(["original", *(fmt(first["before"][k]) for k in names)])
            for key, label in (("digits-calibrated", "Smooth-ECE fine-tune"),
                               ("digits-calibrated-lambda0", "lambda = 0 control")):
                if key in cal:
                    rows.append([label, *(fmt(cal[key]["after"][k]) for k in names)])
            blocks += ["The noisy classifier on held-out images (ece: integral over its time buckets):", "",
                       *md_table(["classifier", *names], rows)]
        guided = [r for r in [runs.get("cg-noisy"), *have] if r is not None and r.key in tables]
        rows = []
        for r in guided:
            s, v = best(tables[r.key], exclude_zero=True)
            rows.append([r.label, fmt(s), fmt(v), fmt(tables[r.key]["scales"][f"{s:g}"]["judge_accuracy"])])
        blocks += ["Best guided scale of each run:", "",
                   *md_table(["run", "best scale", "fd_digits", "judge accuracy"], rows)]
        if guided:
            fig, ax = plt.subplots(figsize=(5, 3.2))
            for r in guided:
                t = tables[r.key]["scales"]
                ax.plot([float(s) for s in t], [m["fd_digits"] for m in t.values()], "o-", label=r.label, ms=3)
            ax.set_xlabel("guidance scale", fontsize=8), ax.set_ylabel("fd_digits", fontsize=8)
            ax.legend(fontsize=6)
            res.figure(save_figure(fig, run_dir / "figures" / "digits_calibration_guidance.png"), run_dir,
                       "digits: guidance with the original, calibrated and lambda = 0 classifiers, and the "
                       "regularised variants")
        res.markdown = [*blocks, *res.markdown, *run_table(guided, tables)]
    return res


def section_postprocessor(ctx, runs, tables) -> SectionResult:
    """The classifier-centric study's MNIST table on our data: CFG shards at scales the flow never saw, graded by the
    judge before and after the one-for-all-scales flow (the same samples, ids and seeds)."""
    p, run_dir, plt = ctx.preset, ctx.run_dir, pyplot()
    res = SectionResult("digits_postprocessor", SECTION_TITLES["digits_postprocessor"])
    unseen = runs["flow-unseen"]
    if unseen.key not in tables or not ctx.ok(FLOW_AFTER):
        res.status, res.reason = "failed", ctx.failed_inputs([unseen.grade, FLOW_FIT, FLOW_AFTER])
        return res
    before, after = tables[unseen.key], read_table(ctx.step(FLOW_AFTER))
    summary = json.loads((ctx.step(FLOW_AFTER).out_dir / "postprocess_summary.json").read_text())
    scales = [s for s in before["scales"] if s in after["scales"]]
    res.numbers = {"before": before, "after": after, "scales": scales,
                   "train_scales": [f"{s:g}" for s in p.flow_train_scales],
                   "train_samples_per_scale": 10 * p.flow_train_samples_per_class, "flow_steps": p.flow_steps,
                   "euler_steps": p.flow_euler_steps, "samples_per_scale": before["num_samples"],
                   "median_move": {k: v["move_median"] for k, v in summary["folders"].items()},
                   "fd_lower_after": {s: after["scales"][s]["fd_digits"] < before["scales"][s]["fd_digits"]
                                      for s in scales}}
    rows = [[s, *(x for k in METRICS for x in (fmt(before["scales"][s][k]), fmt(after["scales"][s][k])))]
            for s in scales]
    header = ["CFG scale", *(f"{k} {when}" for k in METRICS for when in ("before", "after"))]
    fig, ax = plt.subplots(1, len(METRICS), figsize=(3 * len(METRICS), 2.8))
    xs = [float(s) for s in scales]
    for i, k in enumerate(METRICS):
        ax[i].plot(xs, [before["scales"][s][k] for s in scales], "o-", label="before")
        ax[i].plot(xs, [after["scales"][s][k] for s in scales], "s--", label="after")
        ax[i].set_title(k, fontsize=9), ax[i].set_xlabel("CFG scale (unseen by the flow)", fontsize=7)
    ax[0].legend(fontsize=7)
    res.figure(save_figure(fig, run_dir / "figures" / "digits_postprocessor.png"), run_dir,
               "digits: the judge's scores before and after the one-for-all-scales post-processor")
    res.markdown = [f"One flow (configs/digits/flow.yaml, {fmt(p.flow_steps)} steps, Euler with "
                    f"{fmt(p.flow_euler_steps)} steps at predict) trained on CFG shards at scales "
                    f"{', '.join(res.numbers['train_scales'])} ({fmt(res.numbers['train_samples_per_scale'])} samples "
                    "each, other seeds than the graded shards), applied to "
                    f"{fmt(before['num_samples'])} samples at each of the unseen scales; the same samples graded by "
                    "the judge before and after.", "", *res.markdown, *md_table(header, rows)]
    return res


def section_ece_vs_fd(ctx, runs, tables) -> SectionResult:
    p, run_dir, plt = ctx.preset, ctx.run_dir, pyplot()
    res = SectionResult("ece_vs_fd", "8. Integral ECE vs fd_digits across the classifier-guided runs")
    points = {}
    guided = [r for r in runs.values() if r.classifier and r.key in tables and r.key != "cfg-plus-cg"]
    s_abl = f"{p.ablation_scale:g}"
    try:
        eces = guide_integral_eces(ctx, guided)
    except Exception as err:  # noqa: BLE001 - reported, the other sections still render
        res.status, res.reason = "failed", f"integral ECE could not be measured: {type(err).__name__}: {err}"
        eces = {}
    for r in guided:
        if r.key in eces and s_abl in tables[r.key]["scales"]:
            points[r.key] = {"label": r.label, "integral_ece": eces[r.key],
                             "fd_digits": tables[r.key]["scales"][s_abl]["fd_digits"]}
    if res.status == "ok" and len(points) < 3:
        res.status = "failed"
        res.reason = (f"{len(points)} classifier-guided runs finished; a rank correlation needs 3 "
                      f"({ctx.failed_inputs([r.grade for r in runs.values() if r.classifier])})")
    if res.status == "ok":
        from scipy.stats import spearmanr

        xs = [v["integral_ece"] for v in points.values()]
        ys = [v["fd_digits"] for v in points.values()]
        rho, pval = spearmanr(xs, ys)
        rho = float(rho) if not math.isnan(rho) else float("nan")
        res.numbers = {"points": points, "spearman_rho": rho, "spearman_p": float(pval),
                       "guidance_scale": p.ablation_scale, "time_points": p.ece_time_points, "ece_bins": ECE_BINS,
                       "images_per_time": p.ece_samples}
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        ax.scatter(xs, ys)
        for v in points.values():
            ax.annotate(v["label"][:24], (v["integral_ece"], v["fd_digits"]), fontsize=5)
        ax.set_xlabel("integral ECE of the guide (on its input)", fontsize=8)
        ax.set_ylabel(f"fd_digits at scale {s_abl}", fontsize=8)
        res.figure(save_figure(fig, run_dir / "figures" / "ece_vs_fd.png"), run_dir,
                   "integral ECE vs fd_digits")
        rows = [[v["label"], fmt(v["integral_ece"]), fmt(v["fd_digits"])] for v in points.values()]
        res.markdown = [f"Integral ECE: the guide's top-label ECE ({fmt(ECE_BINS)} bins) on what it reads (x_t, or "
                        "x0_hat from "
                        f"the diffusion model) for held-out images noised to {fmt(p.ece_time_points)} equally "
                        f"spaced t, {fmt(p.ece_samples)} images each, averaged over t; fd_digits at guidance "
                        f"scale {fmt(p.ablation_scale)}. Spearman's rho = {fmt(rho)} (p = {fmt(float(pval))}).",
                        "", *res.markdown, *md_table(["run", "integral ECE", "fd_digits"], rows)]
    return res


def guide_integral_eces(ctx, runs: list[Run]) -> dict[str, float]:
    """Integral ECE of each run's guide on the input it reads (see section 8's text); runs sharing a guide and an
    input share the value."""
    from ..calibration.ece import expected_calibration_error, integral_ece, top_label_confidence
    from ..diffusion.sampling import build_denoiser
    from ..io.instantiate import instantiate
    from ..modules.cfg_diffusion import CFGDiffusion

    p = ctx.preset
    diffusion = CFGDiffusion.from_checkpoint(ctx.step("digits-cfg").product)
    schedule = diffusion.schedule
    images, labels = held_out_images(ctx, p.ece_samples)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(images.shape, generator=gen)
    T = schedule.num_train_steps
    indices = [int((k + 0.5) / p.ece_time_points * (T - 1)) for k in range(p.ece_time_points)]
    cache: dict[tuple, float] = {}
    out = {}
    for r in runs:
        spec = ctx.config_value(ctx.step(r.sample), TERM0)
        args = spec.get("init_args", {})
        key = (args["classifier"]["init_args"]["checkpoint"], args.get("input", "x_t"), args.get("clip_x0", True))
        if key not in cache:
            guide = instantiate(spec)  # the run's own term: its classifier, its input, its clipping
            classifier = guide.classifier.eval()
            eces = []
            for idx in indices:
                abar = float(schedule.abar(idx))
                x_t = math.sqrt(abar) * images + math.sqrt(1 - abar) * noise
                t = torch.full((len(images),), float(schedule.model_time(idx)))
                with torch.no_grad():
                    if guide.input == "x_t":
                        logits = classifier(x_t, t)
                    else:
                        x0 = build_denoiser(diffusion)(x_t, t, torch.full_like(t, abar), labels).x0
                        logits = classifier(guide.x0_input(x0), None)
                conf, correct = top_label_confidence(torch.softmax(logits.double(), dim=1), labels)
                eces.append(float(expected_calibration_error(conf, correct, ECE_BINS)))
            cache[key] = float(integral_ece(eces))
        out[r.key] = cache[key]
    return out


def held_out_images(ctx, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of the grading data's test split (the judge's real data)."""
    from ..io.instantiate import instantiate

    grade = next(r for r in ctx.steps.values() if r.command == "test")
    dm = instantiate(ctx.config(grade)["data"])
    dm.setup("test")
    xs, ys, got = [], [], 0
    for batch in dm.test_dataloader():
        xs.append(batch[0]), ys.append(batch[1])
        got += len(batch[1])
        if got >= n:
            break
    return torch.cat(xs)[:n].float(), torch.cat(ys)[:n].long()
