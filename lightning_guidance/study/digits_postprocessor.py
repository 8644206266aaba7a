"""Section 7: the one-for-all-scales rectified-flow post-processor on digits (the classifier-centric study's MNIST
table on our data): CFG shards at the training scales (other seeds), one flow for all of them
(``configs/digits/flow.yaml``), and CFG shards at scales the flow never saw graded by the judge before and after it
(the same samples, ids and seeds)."""

from __future__ import annotations

import json

from . import digits
from .digits import METRICS
from .plan import SWEEP_VALUES, Step
from .section import Claim, Products, Section, SectionResult, fmt, md_table, numbers_of

FLOW_TRAIN, FLOW_FIT, FLOW_AFTER = "sample-digits-flow-train", "digits-flow", "grade-digits-flow-unseen-after"


def plan(plan) -> None:
    from ..guidance.sweep import Sweep

    p = plan.preset
    digits.plan_base(plan)
    per_scale = 10 * p.flow_train_samples_per_class
    train = plan.sample(FLOW_TRAIN, (digits.SAMPLING, "digits/flow_train_samples.yaml"), "digits/samples_flow_train",
                        "digits-cfg",
                        {SWEEP_VALUES: [float(s) for s in p.flow_train_scales],
                         "model.init_args.samples_per_class": p.flow_train_samples_per_class,
                         "model.init_args.shard_size": per_scale, "model.init_args.batch_size": per_scale,
                         "model.init_args.sampler": "ddim",
                         "model.init_args.sampler_kwargs": {"num_steps": p.digits_ddim_steps, "eta": 0.0}},
                        ["digits-cfg"])
    unseen = digits.runs(p)["flow-unseen"]
    digits.plan_run(plan, unseen)
    unseen_sample = plan.steps[unseen.sample]

    def folders(step: Step, scales) -> list[str]:
        return [str(step.out_dir / Sweep("cfg").folder(s)) for s in scales]

    edits = {**digits.image_edits(p, "flow"), "model.init_args.net.init_args.model_channels": p.digits_model_channels,
             "data.init_args.shards": folders(train, p.flow_train_scales),
             "data.init_args.predict_shards": folders(unseen_sample, p.flow_unseen_scales),
             "data.init_args.batch_size": min(128, per_scale * len(p.flow_train_scales)),
             "model.init_args.integrator": "euler",
             "model.init_args.integrator_kwargs": {"num_steps": p.flow_euler_steps}}
    _, post = plan.flow(FLOW_FIT, "digits/flow.yaml", "digits/flow", p.flow_steps, edits,
                        needs=[train.name, unseen_sample.name])
    before = plan.steps[unseen.grade]
    e = {**before.edits, "model.init_args.output_dir": str(post.out_dir), "trainer.default_root_dir": str(post.out_dir)}
    plan.add(Step(FLOW_AFTER, plan.section, "test", list(before.configs), e, [*before.needs, post.name],
                  str(post.out_dir / "metrics_table.json")))


def analyse(products: Products, res: SectionResult) -> None:
    from ..io.figures import pyplot

    p, tables = products.preset, digits.read_tables(products)
    unseen = digits.runs(p)["flow-unseen"]
    if unseen.key not in tables or not products.ok(FLOW_AFTER):
        raise LookupError(products.failed_inputs([unseen.grade, FLOW_FIT, FLOW_AFTER]))
    before, after = tables[unseen.key], digits.read_table(products.step(FLOW_AFTER).product)
    summary = json.loads((products.step(FLOW_AFTER).out_dir / "postprocess_summary.json").read_text())
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
    fig, ax = pyplot().subplots(1, len(METRICS), figsize=(3 * len(METRICS), 2.8))
    xs = [float(s) for s in scales]
    for i, k in enumerate(METRICS):
        ax[i].plot(xs, [before["scales"][s][k] for s in scales], "o-", label="before")
        ax[i].plot(xs, [after["scales"][s][k] for s in scales], "s--", label="after")
        ax[i].set_title(k, fontsize=9), ax[i].set_xlabel("CFG scale (unseen by the flow)", fontsize=7)
    ax[0].legend(fontsize=7)
    res.figure(fig, "digits_postprocessor.png", "digits: the judge's scores before and after the one-for-all-scales "
                                                "post-processor")
    res.markdown = [f"One flow (configs/digits/flow.yaml, {fmt(p.flow_steps)} steps, Euler with "
                    f"{fmt(p.flow_euler_steps)} steps at predict) trained on CFG shards at scales "
                    f"{', '.join(res.numbers['train_scales'])} ({fmt(res.numbers['train_samples_per_scale'])} samples "
                    f"each, other seeds than the graded shards), applied to {fmt(before['num_samples'])} samples at "
                    "each of the unseen scales; the same samples graded by the judge before and after.", "",
                    *res.markdown, *md_table(header, rows)]


def c_postprocessor(n):
    s = numbers_of(n, "digits_postprocessor")
    b, a = s["before"]["scales"], s["after"]["scales"]
    return ("fd_digits before → after: " + "; ".join(f"s = {x}: {fmt(b[x]['fd_digits'])} → {fmt(a[x]['fd_digits'])}"
                                                     for x in s["scales"]), all(s["fd_lower_after"].values()))


SECTION = Section(
    "digits_postprocessor", "7. Digits, the one-for-all-scales postprocessor", digits.DATA,
    (*digits.SIZES, "flow_train_scales", "flow_unseen_scales", "flow_train_samples_per_class", "flow_steps",
     "flow_euler_steps"), plan, analyse, claims=(
        Claim("postprocessor", "Zhao & Schwing (classifier-centric)", "the NN rectified-flow postprocessor lowers FID "
              "at every CFG scale", "after < before at every scale", c_postprocessor,
              "a briefly trained flow on a few hundred generated digits, its k nearest neighbours among the few real "
              "digits of each class: the flow can pull samples toward a few training digits and lose variety, which "
              "fd_digits penalises"),))
