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

from pathlib import Path

import numpy as np

from ..metrics.graded import Graded
from ..stats import Estimate, text
from . import digits
from ..launch.steps import Step
from .plan import SWEEP_VALUES
from ..io.tables import fmt, md_table
from ..launch.products import Products
from ..stats.claims import Claim, stored_effect
from .section import Section, SectionResult

FLOW_FIT, FLOW_AFTER = "digits-flow", "grade-digits-flow-unseen-after"
MEMORISATION = "digits-memorisation"
#: the graded sets, all on the same sample ids: key -> (label, its test step)
SETS = {"before": ("CFG samples (before)", "grade-digits-flow-unseen"),
        "flow": ("+ flow, same-class neighbours (ours)", FLOW_AFTER),
        "any_class": ("+ flow, neighbours of any class", "grade-digits-flow-any-class"),
        "per_scale": ("+ flow trained at this scale only", "grade-digits-flow-per-scale"),
        "copy": ("nearest training digit (copy)", "grade-digits-nn-copy")}
#: the paper's only table for this method: CIFAR-10, EDM base model, Inception FID at three CFG scales (its Tab. 2)
PAPER_TABLE = {"dataset": "CIFAR-10", "model": "EDM", "metric": "Inception FID", "scales": [2.25, 2.5, 2.75],
               "before": [8.02, 9.40, 10.75], "after": [5.82, 5.94, 6.18]}
CLOSE = 0.05  # memorisation: the held-out distances' quantile a sample closer than is "too close"


def source(p) -> digits.Run:
    """The CFG samples the flows post-process: s = 1 and the scales the one-for-all flow never saw."""
    return digits.Run("flow-unseen", "CFG at s = 1 and at the post-processor's unseen scales", "digits_postprocessor",
                      digits.SAMPLING, [1.0, *p.flow_unseen_scales], ddpm=False)


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

    def train_shards(key: str, scales, per_class: int, edits: dict) -> Step:
        """CFG samples of training seed 0's model for a flow to train on (not graded)."""
        run = digits.Run(key, "CFG samples a flow trains on", "digits_postprocessor",
                         (digits.SAMPLING, "digits/flow_train_samples.yaml"), scales, edits=edits, ddpm=False)
        digits.plan_run(plan, run, per_class, (0,), grade=False)
        return plan.steps[run.sample]

    train = train_shards("flow-train", p.flow_train_scales, n, {})
    # App. B's fair comparison: the per-scale flow gets as many training samples as the one-for-all one, other seeds
    single = train_shards("flow-train-per-scale", [p.flow_per_scale], n * k, {"model.init_args.seed": 2_000_000})
    src_run = source(p)
    digits.plan_run(plan, src_run, seeds=(0,))  # the flows are trained on seed 0's samples: graded on seed 0's
    src, before = plan.steps[src_run.sample], plan.steps[src_run.grade]

    def folders(out: Path, scales) -> list[str]:
        return [str(out / cfg_folder(s)) for s in scales]

    def graded(name: str, out: Path, scales, needs: list[str]) -> None:
        e = {**before.edits, SWEEP_VALUES: [float(s) for s in scales], "model.init_args.output_dir": str(out),
             "trainer.default_root_dir": str(out)}
        plan.add(Step(name, plan.section, "test", list(before.configs), e, [*before.needs, *needs],
                      str(out / "metrics_table.json")))

    common = {**digits.image_edits(p, "flow"), "model.init_args.net.init_args.model_channels": p.digits_model_channels,
              "data.init_args.batch_size": min(128, 10 * n * k), "model.init_args.integrator": "euler",
              "model.init_args.warmup_steps": min(100, p.flow_steps // 4),  # a short run still reaches its rate
              "model.init_args.integrator_kwargs": {"num_steps": p.flow_euler_steps}}
    posts = []
    for key, name, shards, scales, edits in (
            ("flow", FLOW_FIT, train, src_run.scales, {}),
            ("any_class", "digits-flow-any-class", train, src_run.scales, {"model.init_args.same_class": False}),
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
                                   folders(src.out_dir, src_run.scales), [src.name]), src_run.scales,
           ["digits-nn-copy"])
    search(MEMORISATION, "digits/memorisation.yaml", "nearest_training.npz",
           [*folders(src.out_dir, src_run.scales), *posts],
           [src.name, *(f"{n}-postprocess" for n in (FLOW_FIT, "digits-flow-any-class", "digits-flow-per-scale"))])


# ---- reading ------------------------------------------------------------------------------------------------------
def quality(products: Products, scales: list[str]) -> tuple[dict, dict, dict]:
    """``(sets, contrasts, table)``: each graded set's figures per scale and their paired differences, all from one
    bootstrap over sample ids and real ids shared by every set (value ± 1.96 SE); ``table``: the before set's table."""
    from ..metrics.shared_resamples import shared_resamples

    have = {k: Graded.read([products.step(step).product]) for k, (_, step) in SETS.items() if products.ok(step)}
    if "before" not in have or "flow" not in have:
        raise LookupError(products.failed_inputs([SETS["before"][1], SETS["flow"][1]]))
    g = have["before"]
    draws = shared_resamples({f"{k}@{s}": got.products(s)[0] for k, got in have.items() for s in scales
                              if s in got.tables[0]["scales"]}, g.real()[0], fd_name=g.settings["fd_name"],
                             k=g.settings.get("k", 3), num_resamples=products.preset.flow_resamples)
    sets: dict = {}
    for name in draws.estimates:
        key, s = name.split("@")
        sets.setdefault(key, {"scales": {}, "estimates": {}})
        sets[key]["estimates"][s] = draws.figures(name, digits.METRICS)
        sets[key]["scales"][s] = {m: e["value"] for m, e in sets[key]["estimates"][s].items()}

    def diff(a: str, b: str) -> dict:
        return {s: draws.difference(f"{a}@{s}", f"{b}@{s}", digits.METRICS)
                for s in scales if f"{a}@{s}" in draws.estimates and f"{b}@{s}" in draws.estimates}

    unseen = [(f"flow@{s}", f"before@{s}") for s in scales[1:] if f"flow@{s}" in draws.estimates]
    contrasts = {"vs_before": {k: diff(k, "before") for k in have if k != "before"},
                 "flow_vs": {k: diff("flow", k) for k in ("copy", "any_class", "per_scale") if k in have},
                 "worst_unseen": {m: draws.largest_difference(unseen, m) for m in ("fd_digits", "kd_digits")}}
    return sets, contrasts, g.tables[0]


def memorisation(products: Products, scales: list[str]) -> tuple[dict, dict]:
    """Each set's L2 distance (pixels) to its nearest training digit against held-out real digits'
    (``metrics.memorisation``), at s = 1 and pooled over the unseen scales; the numbers, and the distances."""
    from ..io.nearest_training import read_nearest_training
    from ..metrics.memorisation import memorisation_check

    found = read_nearest_training(products.step(MEMORISATION).product)
    held = found["held_out"]["distance"]
    folders = {k: products.step(step).out_dir for k, (_, step) in SETS.items() if k != "copy" and products.ok(step)}
    out, distances = {"held_out": {"n": len(held), "quantile": CLOSE}, "sets": {}}, {"held_out": held}
    for key, folder in folders.items():
        for group, wanted in (("s = 1", scales[:1]), ("unseen s", scales[1:])):
            entries = {s: found.get(str((folder / cfg_folder(float(s))).resolve())) for s in wanted}
            got = [s for s in wanted if entries[s] is not None]
            if got:
                d = np.stack([entries[s]["distance"] for s in got], 1)
                checks = memorisation_check(d, held, CLOSE, products.preset.flow_resamples)
                out["sets"][f"{key}|{group}"] = {"set": key, "scales": got, "group": group, **{
                    k: Estimate.from_interval(v, len(d)).as_json() for k, v in checks.items()}}
                distances[f"{key}|{group}"] = d.ravel()
    return out, distances


# ---- the report -----------------------------------------------------------------------------------------------------
def figures(res: SectionResult, products: Products, numbers: dict, table: dict, scales: list[str]) -> None:
    from ..io.panels import digit_grids_figure, estimate_panels
    from ..io.shards import read_folder

    floor = table.get("real_floor", {}).get("metrics", {})
    floors = {m: (floor[m], "real vs real at this n (floor)") for m in digits.METRICS if m in floor}

    def curves(by_key: dict, m: str) -> dict:
        return {SETS[k][0]: ([float(s) for s in got], [got[s][m] for s in got]) for k, got in by_key.items()}

    estimates = {k: v["estimates"] for k, v in numbers["sets"].items()}
    index = {label: i for i, (label, _) in enumerate(SETS.values())}  # one style per set in every figure
    res.figure(estimate_panels({m: curves(estimates, m) for m in digits.METRICS}, "CFG scale s", reference=floors,
                               index=index),
               "digits_postprocessor.png", "digits: the judge's figures of each set at each CFG scale (95 % intervals, "
               "value ± z times the bootstrap SE; sets shifted apart along s for legibility; dotted: real vs real at the "
               "same n)")
    res.figure(estimate_panels({f"{m}: set − CFG samples": curves(numbers["vs_before"], m)
                                for m in ("fd_digits", "kd_digits", "judge_accuracy")}, "CFG scale s", zero=True,
                               index=index),
               "digits_postprocessor_effects.png", "digits: each set minus the CFG samples it came from, paired over "
               "the same sample ids (95 % intervals; below 0: lower than before)")

    def grid(step: str, s: str) -> tuple | None:
        got = read_folder(products.step(step).out_dir / cfg_folder(float(s))) if products.ok(step) else None
        return None if got is None else (got[0].float(), got[1])

    rows = [[(f"s = {s}\n{label}", *got) if (got := grid(step, s)) else None for label, step in SETS.values()]
            for s in scales]
    res.figure(digit_grids_figure(rows), "digits_postprocessor_grids.png", "digits: the same samples (rows of each "
               "grid: class) at each CFG scale s (figure rows), before, after each flow, and copied from the nearest "
               "training digit (columns)")


def figure_memorisation(res: SectionResult, mem: dict, distances: dict) -> None:
    from ..io.panels import ecdf_figure

    curves = [("held-out real digits", distances["held_out"], len(SETS))]
    curves += [(f"{SETS[row['set']][0]}, s = {', '.join(row['scales'])}", distances[name], list(SETS).index(row["set"]))
               for name, row in mem["sets"].items() if row["group"] == "unseen s"]
    res.figure(ecdf_figure(curves, "L2 distance to the nearest training digit (pixels in [-1, 1])"),
               "digits_memorisation.png", "digits: distance to the nearest training digit, outputs vs held-out real "
               "digits (empirical CDFs, 95 % DKW bands; the copy sits at 0)")


def analyse(products: Products, res: SectionResult) -> None:
    p = products.preset
    scales = [f"{s:g}" for s in source(p).scales]
    sets, contrasts, table = quality(products, scales)
    n = contrasts["worst_unseen"]["fd_digits"]["n"]
    res.numbers = {"sets": sets, **contrasts, "scales": scales[1:], "before": sets["before"], "after": sets["flow"],
                   "samples_per_scale": n, "train_scales": [f"{s:g}" for s in p.flow_train_scales],
                   "per_scale": f"{p.flow_per_scale:g}", "train_samples_per_scale": 10 * p.flow_train_samples_per_class,
                   "flow_steps": p.flow_steps, "euler_steps": p.flow_euler_steps, "resamples": p.flow_resamples,
                   "real_floor": table.get("real_floor"), "paper_table": PAPER_TABLE}
    rows = [[SETS[k][0], s, *(text(got["estimates"][s][m]) for m in digits.METRICS)]
            for k, got in sets.items() for s in scales if s in got["estimates"]]
    diffs = [[f"{SETS[k][0]} − CFG samples", s, *(text(d[s][m]) for m in digits.METRICS)]
             for k, d in contrasts["vs_before"].items() for s in d]
    diffs += [[f"flow (ours) − {SETS[k][0]}", s, *(text(d[s][m]) for m in digits.METRICS)]
              for k, d in contrasts["flow_vs"].items() for s in d]
    t = PAPER_TABLE
    res.markdown = [
        f"One flow for all scales (configs/digits/flow.yaml, {fmt(p.flow_steps)} steps, Euler with "
        f"{fmt(p.flow_euler_steps)} steps) trained on CFG samples at s = {', '.join(res.numbers['train_scales'])} "
        f"({fmt(res.numbers['train_samples_per_scale'])} each, other seeds), applied to {fmt(n)} CFG samples at "
        f"s = 1 and at each scale it never saw; the same samples graded by the judge before and after. Controls on "
        "the same sample ids: the flow with neighbours of any class (**same-class neighbours are our choice**, not "
        "the paper's stated one: they make a wrong class after the flow rare by construction), a flow trained at "
        f"s = {res.numbers['per_scale']} only on as many samples, and each sample's nearest training digit (same "
        "class, pixels: what a flow that only memorised would give). The flows are trained once, on the samples of "
        "the CFG model of training seed 0: every interval (95 %) is over sample ids and real ids "
        f"({fmt(p.flow_resamples)} draws shared by all sets, so differences are paired), the value ± z times the "
        "bootstrap SE (a bootstrap's repeated samples shift a set's distances, so its percentile interval can miss the value); "
        "flow and CFG training noise are not in it. The paper reports this "
        f"method's numbers on {t['dataset']} only ({t['model']}, {t['metric']} "
        f"{' / '.join(map(fmt, t['before']))} → {' / '.join(map(fmt, t['after']))} at s = "
        f"{' / '.join(map(fmt, t['scales']))}, its Tab. 2); on MNIST it shows figures (Fig. 6, S5). We test the "
        "direction only, with fd_digits and kd_digits.", "",
        *md_table(["set", "s", *digits.METRICS], rows),
        "Paired differences (same sample ids):", "", *md_table(["difference", "s", *digits.METRICS], diffs)]
    figures(res, products, res.numbers, table, scales)
    if products.ok(MEMORISATION):
        mem, distances = memorisation(products, scales)
        res.numbers["memorisation"] = mem
        res.markdown += [f"Memorisation: L2 distance (pixels) to the nearest training digit; held-out real digits "
                         f"(n = {fmt(mem['held_out']['n'])}) are the reference (the copy control sits at 0).", "",
                         *md_table(["set", "s", "median distance", "median − held-out median",
                                    f"share below the held-out {fmt(CLOSE)} quantile ({fmt(CLOSE)}: like real)"],
                                   [[SETS[r["set"]][0], ", ".join(r["scales"]), text(r["median"]),
                                     text(r["median_minus_held_out"]), text(r["share_below_held_out_quantile"])]
                                    for r in mem["sets"].values()])]
        figure_memorisation(res, mem, distances)


# ---- claims ---------------------------------------------------------------------------------------------------------
def c_lowers(metric: str):
    def words(s: dict, _) -> str:
        d = s["vs_before"]["flow"]
        return ("after − before: " + "; ".join(f"s = {x}: {text(d[x][metric])}" for x in s["scales"])
                + f"; the largest of them is the effect (n = {fmt(s['samples_per_scale'])} per scale)")
    return stored_effect("digits_postprocessor", ("worst_unseen", metric), words, -1,
                         f"max over s of {metric} after − before")


c_one_for_all = stored_effect(
    "digits_postprocessor", ("flow_vs", "per_scale", lambda s: s["per_scale"], "fd_digits"),
    lambda s, d: f"s = {s['per_scale']}: fd_digits(one for all) − fd_digits(trained at s = {s['per_scale']} only) = "
                 f"{d.text()} (an interval containing 0: on par, which the paper also allows)",
    -1, "fd_digits one-for-all − per-scale")


PAPER, FLOW_REASON = "Zhao & Schwing (classifier-centric)", (
    "a briefly trained flow on a few hundred generated digits and the few real digits of each class: it can pull "
    "samples toward a few training digits and lose variety, which the distances penalise; see the copy control")
SECTION = Section(
    "digits_postprocessor", "7. Digits, the nearest-neighbour post-processor and its controls", digits.DATA,
    (*digits.SIZES, "flow_train_scales", "flow_unseen_scales", "flow_per_scale", "flow_train_samples_per_class",
     "flow_steps", "flow_euler_steps", "flow_resamples"), plan, analyse, claims=(
        Claim("postprocessor", PAPER, "the NN rectified-flow postprocessor improves quality at every CFG scale it "
              "never saw (their numbers: CIFAR-10 Tab. 2, EDM, Inception FID; MNIST: Fig. 6 and S5, figures only)",
              "fd_digits after < before at every unseen scale (direction only)", c_lowers("fd_digits"), FLOW_REASON),
        Claim("postprocessor_kd", PAPER, "the same, in the kernel distance (unbiased at small n)",
              "kd_digits after < before at every unseen scale", c_lowers("kd_digits"), FLOW_REASON),
        Claim("postprocessor_one_for_all", PAPER, "one flow for all scales does as well as or better than a flow "
              "trained at one scale on as many samples (App. B)", "fd_digits(one for all) − fd_digits(per scale) "
              "≤ 0", c_one_for_all, "the per-scale flow trains on samples of the very scale it is tested at")))
