"""Section 8: the integral ECE of each classifier-guided run's guide against the run's ``fd_digits``, with Spearman's
rank correlation. Each distinct guide (its classifier and the input it reads) is measured once, by a ``test`` of
``configs/digits/guide_calibration.yaml`` with the run's own guidance term (``guide_calibration.json``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from . import digits, digits_calibration, digits_cg
from .digits import Run
from .plan import Step, step_config
from .section import Claim, Products, Section, SectionResult, fmt, md_table, numbers_of

ECE_BINS = 10


def guided(p) -> list[Run]:
    """The runs whose guide is measured: every classifier-guided run but CFG + classifier (a CFG run at heart)."""
    return [r for r in digits.runs(p).values() if r.classifier and r.key != "cfg-plus-cg"]


def guide_term(step: Step) -> dict:
    """The guidance term a sampling step's config gives (its classifier's checkpoint included)."""
    return step_config(step)["model"]["init_args"]["sweep"]["terms"][0]


def ece_step(steps: dict[str, Step], r: Run) -> str:
    """The name of the step that measures the run's guide (one per classifier and input it reads)."""
    return f"ece-{r.classifier}-{guide_term(steps[r.sample])['init_args'].get('input', 'x_t')}"


def plan(plan) -> None:
    p = plan.preset
    digits_cg.plan(plan)
    digits_calibration.plan(plan)
    for r in guided(p):
        name = ece_step(plan.steps, r)
        out = plan.dir("digits", "ece", name.removeprefix("ece-"))
        edits = {"trainer.default_root_dir": out, "trainer.accelerator": p.accelerator,
                 "trainer.enable_progress_bar": False, "model.init_args.output_dir": out,
                 "model.init_args.checkpoint": plan.product("digits-cfg"),
                 "model.init_args.term": guide_term(plan.steps[r.sample]),
                 "model.init_args.num_buckets": p.ece_time_points, "model.init_args.n_bins": ECE_BINS,
                 "model.init_args.num_samples": p.ece_samples, **digits.image_edits(p, "grade")}
        plan.add(Step(name, plan.section, "test", [plan.config("digits/guide_calibration.yaml")], edits,
                      ["digits-cfg", r.classifier], f"{out}/guide_calibration.json"))


def analyse(products: Products, res: SectionResult) -> None:
    from ..io.figures import pyplot

    p, tables = products.preset, digits.read_tables(products)
    s_abl = f"{p.ablation_scale:g}"
    points = {}
    for r in guided(p):
        name = ece_step(products.steps, r)
        if r.key in tables and products.ok(name) and s_abl in tables[r.key]["scales"]:
            ece = json.loads(Path(products.step(name).product).read_text())["integral_ece"]
            points[r.key] = {"label": r.label, "integral_ece": ece,
                             "fd_digits": tables[r.key]["scales"][s_abl]["fd_digits"]}
    if len(points) < 3:
        steps = [n for r in guided(p) for n in (r.grade, ece_step(products.steps, r))]
        raise LookupError(f"{len(points)} classifier-guided runs finished; a rank correlation needs 3 "
                          f"({products.failed_inputs(steps)})")
    from scipy.stats import spearmanr

    xs = [v["integral_ece"] for v in points.values()]
    ys = [v["fd_digits"] for v in points.values()]
    rho, pval = spearmanr(xs, ys)
    rho = float(rho) if not math.isnan(rho) else float("nan")
    res.numbers = {"points": points, "spearman_rho": rho, "spearman_p": float(pval), "guidance_scale": p.ablation_scale,
                   "time_points": p.ece_time_points, "ece_bins": ECE_BINS, "images_per_time": p.ece_samples}
    fig, ax = pyplot().subplots(figsize=(4.5, 3.2))
    ax.scatter(xs, ys)
    for v in points.values():
        ax.annotate(v["label"][:24], (v["integral_ece"], v["fd_digits"]), fontsize=5)
    ax.set_xlabel("integral ECE of the guide (on its input)", fontsize=8)
    ax.set_ylabel(f"fd_digits at scale {s_abl}", fontsize=8)
    res.figure(fig, "ece_vs_fd.png", "integral ECE vs fd_digits")
    rows = [[v["label"], fmt(v["integral_ece"]), fmt(v["fd_digits"])] for v in points.values()]
    res.markdown = [f"Integral ECE: the guide's top-label ECE ({fmt(ECE_BINS)} bins) on what it reads (x_t, or x0_hat "
                    f"from the diffusion model) for held-out images noised to the centres of {fmt(p.ece_time_points)} "
                    f"equal time buckets, {fmt(p.ece_samples)} images each (each with its own noise), averaged over "
                    f"the buckets; fd_digits at guidance scale {fmt(p.ablation_scale)}. Spearman's rho = {fmt(rho)} "
                    f"(p = {fmt(float(pval))}).", "", *res.markdown,
                    *md_table(["run", "integral ECE", "fd_digits"], rows)]


def c_ece_fd(n):
    s = numbers_of(n, "ece_vs_fd")
    return (f"Spearman rho(integral ECE, fd_digits) = {fmt(s['spearman_rho'])} over {fmt(len(s['points']))} runs",
            s["spearman_rho"] > 0)


SECTION = Section(
    "ece_vs_fd", "8. Integral ECE vs fd_digits across the classifier-guided runs", digits.DATA,
    ("ece_time_points", "ece_samples", "ablation_scale"), plan, analyse, claims=(
        Claim("ece_fd", "Ma et al. / Javid et al.", "lower integral ECE goes with lower FID",
              "positive rank correlation", c_ece_fd,
              "few runs, and our runs vary much more than the guide's calibration"),))
