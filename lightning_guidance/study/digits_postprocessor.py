"""Section 7: the nearest-neighbour rectified-flow post-processor on digits (Zhao & Schwing), with its controls.

One flow for all scales (``configs/digits/flow.yaml``: trained on CFG shards at the training scales, other seeds)
post-processes CFG samples at s = 1 and at scales it never saw; the same samples (ids, seeds) are graded by the judge
before and after. Controls, each graded on the same ids: the flow with neighbours of any class (ours searches the
sample's own class, which makes "no wrong class" true by construction), a flow trained at one unseen scale only on
as many samples (App. B's comparison), and a copy of each sample's nearest training digit (what a flow that only
memorised would give); the memorisation check compares each set's distance to its nearest training digit with that
of held-out real digits. The paper's numbers for this method are its CIFAR-10 table (EDM, Inception FID); its MNIST
results are figures (Fig. 6, S5): we test the direction only. The flows are trained once, on the samples of the CFG
model of training seed 0; every interval is a bootstrap over sample ids (and the real ids), paired across sets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import digits
from .plan import SWEEP_VALUES, Step
from .section import Claim, Products, Section, SectionResult, fmt, md_table, numbers_of

FLOW_TRAIN, FLOW_FIT, FLOW_AFTER = "sample-digits-flow-train", "digits-flow", "grade-digits-flow-unseen-after"
MEMORISATION = "digits-memorisation"
#: the graded sets, all on the same sample ids: key -> (label, its test step)
SETS = {"before": ("CFG samples (before)", "grade-digits-flow-unseen"),
        "flow": ("+ flow, same-class neighbours (ours)", FLOW_AFTER),
        "any_class": ("+ flow, neighbours of any class", "grade-digits-flow-any-class"),
        "per_scale": ("+ flow trained at this scale only", "grade-digits-flow-per-scale"),
        "copy": ("nearest training digit (copy)", "grade-digits-nn-copy")}
FIGURES = ("fd_digits", "kd_digits", "precision", "recall", "judge_accuracy")
RESAMPLES = 1000  # the shared bootstrap resamples of sample ids (and real ids)


def cfg_folder(scale: float) -> str:
    from ..guidance.sweep import Sweep

    return Sweep("cfg").folder(scale)


def plan(plan) -> None:
    p = plan.preset
    if p.flow_per_scale not in p.flow_unseen_scales:
        raise ValueError(f"flow_per_scale {p.flow_per_scale:g} must be one of flow_unseen_scales "
                         f"{list(p.flow_unseen_scales)}: the per-scale flow is compared where the other never trained")
    digits.plan_base(plan)
    n, k = p.flow_train_samples_per_class, len(p.flow_train_scales)

    def train_shards(name: str, scales, per_class: int, edits: dict) -> Step:
        return plan.sample(name, "digits/sample_cfg_flow_train.yaml", f"digits/samples_{name.removeprefix('sample-')}",
                           "digits-cfg", {SWEEP_VALUES: [float(s) for s in scales],
                                          "model.init_args.samples_per_class": per_class,
                                          "model.init_args.shard_size": 10 * per_class,
                                          "model.init_args.batch_size": 10 * per_class,
                                          "model.init_args.sampler": "ddim", **edits,
                                          "model.init_args.sampler_kwargs": {"num_steps": p.digits_ddim_steps,
                                                                             "eta": 0.0}}, ["digits-cfg"])

    train = train_shards(FLOW_TRAIN, p.flow_train_scales, n, {})
    # App. B's fair comparison: the per-scale flow gets as many training samples as the one-for-all one, other seeds
    single = train_shards(f"{FLOW_TRAIN}-per-scale", [p.flow_per_scale], n * k, {"model.init_args.seed": 2_000_000})
    source = digits.runs(p)["flow-unseen"]
    digits.plan_run(plan, source)
    src, before = plan.steps[source.sample], plan.steps[source.grade]

    def folders(out: Path, scales) -> list[str]:
        return [str(out / cfg_folder(s)) for s in scales]

    def graded(name: str, out: Path, scales, needs: list[str]) -> None:
        e = {**before.edits, SWEEP_VALUES: [float(s) for s in scales], "model.init_args.output_dir": str(out),
             "trainer.default_root_dir": str(out)}
        plan.add(Step(name, plan.section, "test", list(before.configs), e, [*before.needs, *needs],
                      str(out / "metrics_table.json")))

    common = {**digits.image_edits(p, "flow"), "model.init_args.net.init_args.model_channels": p.digits_model_channels,
              "data.init_args.batch_size": min(128, 10 * n * k), "model.init_args.integrator": "euler",
              "model.init_args.integrator_kwargs": {"num_steps": p.flow_euler_steps}}
    posts = []
    for key, name, shards, scales, edits in (
            ("flow", FLOW_FIT, train, source.scales, {}),
            ("any_class", "digits-flow-any-class", train, source.scales, {"model.init_args.same_class": False}),
            ("per_scale", "digits-flow-per-scale", single, [p.flow_per_scale], {})):
        _, post = plan.flow(name, "digits/flow.yaml", f"digits/{name.removeprefix('digits-')}", p.flow_steps,
                            {**common, "data.init_args.shards": folders(shards.out_dir, shards.edits[SWEEP_VALUES]),
                             "data.init_args.predict_shards": folders(src.out_dir, scales), **edits},
                            needs=[shards.name, src.name])
        graded(SETS[key][1], post.out_dir, scales, [post.name])
        posts += folders(post.out_dir, scales)
    real = {k: v for k, v in digits.image_edits(p, "flow").items() if k.startswith("data.")}

    def search(name: str, config: str, product: str, shards: list[str], needs: list[str]) -> Path:
        out = Path(plan.dir("digits", name.removeprefix("digits-")))
        plan.add(Step(name, plan.section, "predict", [plan.config(config)],
                      {"trainer.default_root_dir": str(out), "trainer.accelerator": p.accelerator,
                       "model.init_args.output_dir": str(out), "data.init_args.predict_shards": shards, **real},
                      needs, str(out / product)))
        return out

    graded(SETS["copy"][1], search("digits-nn-copy", "digits/nn_copy.yaml", "copy_summary.json",
                                   folders(src.out_dir, source.scales), [src.name]), source.scales, ["digits-nn-copy"])
    search(MEMORISATION, "digits/memorisation.yaml", "nearest_training.npz",
           [*folders(src.out_dir, source.scales), *posts],
           [src.name, *(f"{n}-postprocess" for n in (FLOW_FIT, "digits-flow-any-class", "digits-flow-per-scale"))])


# ---- reading -------------------------------------------------------------------------------------------------------
def estimate(interval, n: int) -> dict:
    return {"value": interval.estimate, "lo": interval.low, "hi": interval.high, "n": n, "seeds": 1,
            "method": "bootstrap", "se": interval.standard_error, "level": interval.level}


def text(e: dict) -> str:
    return f"{fmt(e['value'])} [{fmt(e['lo'])}, {fmt(e['hi'])}]"


def worst(values: list):
    """The largest of per-scale values (floats, or arrays of replicates)."""
    return np.max(np.stack([np.asarray(v, dtype=np.float64) for v in values]), axis=0)


def quality(products: Products, scales: list[str]) -> tuple[dict, dict, dict]:
    """``(figures, differences, settings)``: each graded set's figures at each scale, and their paired differences,
    with intervals from one shared bootstrap over sample ids (and real ids)."""
    from ..io.sample_products import REAL_GROUP, products_path, read_sample_products
    from ..metrics.shared_resamples import shared_resamples

    have = {k: products.step(step).out_dir for k, (_, step) in SETS.items() if products.ok(step)}
    if "before" not in have or "flow" not in have:
        raise LookupError(products.failed_inputs([SETS["before"][1], SETS["flow"][1]]))
    settings = json.loads((have["before"] / "metrics_table.json").read_text()).get("settings", {})
    sets = {f"{k}@{s}": read_sample_products(products_path(folder, cfg_folder(float(s))))
            for k, folder in have.items() for s in scales if products_path(folder, cfg_folder(float(s))).is_file()}
    draws = shared_resamples(sets, read_sample_products(products_path(have["before"], REAL_GROUP)),
                             fd_name=settings.get("fd_name", "fd_digits"), k=settings.get("k", 3),
                             num_resamples=RESAMPLES)
    n = draws.sizes[0]
    figures: dict = {k: {} for k in have}
    diffs: dict = {k: {} for k in have if k != "before"}
    for name in sets:
        k, s = name.split("@")
        figures[k][s] = {m: estimate(draws.interval(lambda f, a=name, m=m: f[a][m]), n) for m in FIGURES}
        if k != "before":
            diffs[k][s] = {m: estimate(draws.interval(lambda f, a=name, b=f"before@{s}", m=m: f[a][m] - f[b][m]), n)
                           for m in FIGURES}
    contrasts = {}
    for other in ("copy", "any_class", "per_scale"):
        common = [s for s in scales if f"flow@{s}" in sets and f"{other}@{s}" in sets]
        contrasts[other] = {s: {m: estimate(draws.interval(lambda f, a=f"flow@{s}", b=f"{other}@{s}", m=m:
                                                           f[a][m] - f[b][m]), n) for m in FIGURES} for s in common}
    unseen = [s for s in scales if s != "1" and f"flow@{s}" in sets]
    claim = {m: estimate(draws.interval(lambda f, m=m: worst([f[f"flow@{s}"][m] - f[f"before@{s}"][m]
                                                               for s in unseen])), n) for m in ("fd_digits", "kd_digits")}
    return figures, {"vs_before": diffs, "flow_vs": contrasts, "worst_unseen": claim}, {**settings, "n": n}


def memorisation(products: Products, scales: list[str], per_scale: str) -> dict:
    """Each set's distance to its nearest training digit against held-out real digits': the median (interval over
    ids), the difference of medians, and the share below the held-out distances' 5 % quantile (0.05 for a set as
    far from the training digits as new real ones)."""
    from ..io.nearest_training import read_nearest_training
    from ..stats import bootstrap, unpaired_bootstrap

    found = read_nearest_training(products.step(MEMORISATION).product)
    held = found["held_out"]["distance"].astype(np.float64)
    folders = {k: products.step(step).out_dir for k, (_, step) in SETS.items() if k != "copy" and products.ok(step)}
    folders["before"] = products.step(digits.runs(products.preset)["flow-unseen"].sample).out_dir
    out = {"held_out": {"n": len(held), "median": float(np.median(held))}}
    for key, folder in folders.items():
        for group, wanted in (("s = 1", ["1"]), ("unseen", [s for s in scales if s != "1"])):
            cols = [found[str(folder / cfg_folder(float(s)))]["distance"] for s in wanted
                    if str(folder / cfg_folder(float(s))) in found]
            if not cols:
                continue
            d = np.stack(cols, axis=1).astype(np.float64)  # (ids, scales): an id is resampled with all its scales
            med = bootstrap(lambda i: np.median(d[i]), len(d), num_resamples=RESAMPLES)
            gap = unpaired_bootstrap(lambda i: np.median(d[i]), len(d), lambda j: np.median(held[j]), len(held),
                                     num_resamples=RESAMPLES)
            close = bootstrap(lambda i, j: np.mean(d[i] < np.quantile(held[j], 0.05)), (len(d), len(held)),
                              num_resamples=RESAMPLES)
            out.setdefault(key, {})[group] = {
                "scales": [s for s in wanted if str(folder / cfg_folder(float(s))) in found],
                "median": estimate(med, len(d)), "median_minus_held_out": estimate(gap, len(d)),
                "share_below_held_out_q05": estimate(close, len(d))}
    out["per_scale_note"] = f"the per-scale flow post-processes s = {per_scale} only"
    return out


def analyse(products: Products, res: SectionResult) -> None:
    p = products.preset
    scales = [f"{s:g}" for s in digits.runs(p)["flow-unseen"].scales]
    figures, diffs, settings = quality(products, scales)
    res.numbers = {"figures": figures, **diffs, "n": settings["n"], "scales": scales[1:],
                   "train_scales": [f"{s:g}" for s in p.flow_train_scales], "per_scale": f"{p.flow_per_scale:g}",
                   "train_samples_per_scale": 10 * p.flow_train_samples_per_class, "flow_steps": p.flow_steps,
                   "euler_steps": p.flow_euler_steps, "resamples": RESAMPLES}
    if products.ok(MEMORISATION):
        res.numbers["memorisation"] = memorisation(products, scales, f"{p.flow_per_scale:g}")


SECTION = Section(
    "digits_postprocessor", "7. Digits, the nearest-neighbour post-processor and its controls", digits.DATA,
    (*digits.SIZES, "flow_train_scales", "flow_unseen_scales", "flow_per_scale", "flow_train_samples_per_class",
     "flow_steps", "flow_euler_steps"), plan, analyse)
