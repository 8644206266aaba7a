"""The steps and readers that the image sections (4 to 9) share: scikit-learn's 8x8 digits, or MNIST / CIFAR-10 in the
``full`` presets.

Every guided sampling run (:class:`Run`, all declared in :func:`runs`) is a ``predict`` of a shipped
``configs/digits/sample_*.yaml`` and a ``test`` of its shards with ``configs/digits/grade_with_judge.yaml``; the
sections read the ``metrics_table.json`` each test wrote (:func:`read_tables`). The models they sample from are
trained once: the judge, the CFG model, the noisy and the clean classifier.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .plan import DELETE, SWEEP_VALUES, Plan, guide_checkpoint, term
from .section import Products, fmt, md_table

TERM0 = term(0)
METRICS = ("fd_digits", "precision", "recall", "judge_accuracy")
#: EluCD's DDPM reference settings (app. C): every ablation changes one of them
REFERENCE = {"tau1": 1.0, "tau2": 0.5, "gamma": 0.3}
DATA = "scikit-learn's 8x8 digits (embedded; the full presets: MNIST or CIFAR-10 under data/)"
SIZES = ("digits_train_steps", "digits_judge_steps", "digits_model_channels", "digits_samples_per_class",
         "digits_ddim_steps", "digits_ddpm_steps", "dataset", "accelerator")


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


@dataclass
class Run:
    """One guided sampling run: what it samples and which section reports it."""
    key: str
    label: str
    section: str
    config: str
    scales: list[float]
    classifier: str | None = None  # the fit step of its guide (None: CFG only)
    edits: dict = field(default_factory=dict)
    ddpm: bool = True

    @property
    def sample(self) -> str:
        return f"sample-digits-{self.key}"

    @property
    def grade(self) -> str:
        return f"grade-digits-{self.key}"


def offtheshelf_key(tau2: float, gamma: float, through: bool) -> str:
    return f"ots-tau{tau2:g}-gamma{gamma:g}" + ("-through" if through else "")


def runs(p) -> dict[str, Run]:
    """Every sampling run of the image sections, in report order."""
    guided = sorted({*p.cg_scales, p.ablation_scale})
    out = [Run("cfg", "CFG", "digits_cfg", "digits/sample_cfg.yaml", p.cfg_fine_scales, ddpm=False),
           Run("cg-noisy", "CG, noisy classifier on x_t", "digits_cg", "digits/sample_cg.yaml", guided,
               "digits-classifier"),
           Run("cg-clean", "CG, clean classifier on x0_hat", "digits_cg", "digits/sample_offtheshelf.yaml", guided,
               "digits-clean", {f"{TERM0}.init_args.tau2": 1.0, f"{TERM0}.init_args.sine_gamma": 0.0})]
    tau, gamma = REFERENCE["tau2"], REFERENCE["gamma"]
    for tau2, g, through in [*((t, gamma, False) for t in p.tau_ratios), *((tau, g, False) for g in p.sine_gammas),
                             (tau, gamma, True)]:
        out.append(Run(offtheshelf_key(tau2, g, through), f"off-the-shelf, tau2/tau1={tau2:g}, gamma={g:g}"
                       + (", through the denoiser" if through else ""), "digits_cg", "digits/sample_offtheshelf.yaml",
                       [p.ablation_scale], "digits-clean", {f"{TERM0}.init_args.tau2": tau2,
                                                            f"{TERM0}.init_args.sine_gamma": g,
                                                            f"{TERM0}.init_args.through_denoiser": through}))
    out += [Run("cfg-plus-cg", "CFG + clean classifier", "digits_cg", "digits/sample_cfg_plus_cg.yaml",
                p.cfg_plus_cg_scales, "digits-clean", ddpm=False),
            Run("cg-calibrated", "CG, Smooth-ECE fine-tuned classifier", "digits_calibration", "digits/sample_cg.yaml",
                guided, "digits-calibrated"),
            Run("cg-lambda0", "CG, fine-tuned with lambda = 0 (control)", "digits_calibration",
                "digits/sample_cg.yaml", guided, "digits-calibrated-lambda0"),
            Run("tilted", "tilted (clean classifier)", "digits_calibration", "digits/sample_tilted.yaml", guided,
                "digits-clean"),
            Run("entropy", "entropy-adaptive (clean classifier)", "digits_calibration", "digits/sample_entropy.yaml",
                guided, "digits-clean")]
    out += [Run(f"divergence-{d}", f"f-divergence {d} (clean classifier)", "digits_calibration",
                "digits/sample_divergence.yaml", guided, "digits-clean", {f"{TERM0}.init_args.divergence": d})
            for d in p.divergences]
    out.append(Run("flow-unseen", "CFG at s = 1 and at scales the post-processor never saw, before it",
                   "digits_postprocessor", "digits/sample_cfg_unseen.yaml", [1.0, *p.flow_unseen_scales], ddpm=False))
    found: dict[str, Run] = {}
    for r in out:  # an ablation at the reference settings is listed once, where it comes first
        found.setdefault(r.key, r)
    return found


def of_section(p, section: str) -> list[Run]:
    return [r for r in runs(p).values() if r.section == section]


# ---- planning -----------------------------------------------------------------------------------------------------
def plan_base(plan: Plan) -> None:
    """The judge, the CFG model, and CFG's fine sweep (every image section compares with it)."""
    p = plan.preset
    fit_data = image_edits(p, "fit")
    plan.fit("digits-judge", "digits/judge.yaml", "digits/judge", p.digits_judge_steps, fit_data)
    plan.fit("digits-cfg", "digits/cfg.yaml", "digits/cfg", p.digits_train_steps,
             {**fit_data, "model.init_args.net.init_args.model_channels": p.digits_model_channels,
              "trainer.callbacks[SampleGrid]": DELETE})
    plan_run(plan, runs(p)["cfg"])


def plan_classifiers(plan: Plan) -> None:
    """The noisy classifier (on x_t) and its clean twin (on x0_hat), and the runs guided by each."""
    p = plan.preset
    edits = {**image_edits(p, "fit"), "model.init_args.net.init_args.model_channels": p.digits_model_channels}
    plan.fit("digits-classifier", "digits/classifier.yaml", "digits/classifier", p.digits_classifier_steps, edits)
    plan.fit("digits-clean", "digits/clean_classifier.yaml", "digits/clean_classifier", p.digits_clean_steps, edits)
    for key in ("cg-noisy", "cg-clean"):
        plan_run(plan, runs(p)[key])


def plan_run(plan: Plan, r: Run) -> None:
    """The run's ``predict`` and the ``test`` that grades its shards with the judge."""
    p = plan.preset
    n = p.digits_samples_per_class
    e = {SWEEP_VALUES: [float(s) for s in r.scales], "model.init_args.samples_per_class": n,
         "model.init_args.shard_size": 10 * n, "model.init_args.batch_size": 10 * n,
         "model.init_args.sampler": "ddpm" if r.ddpm else "ddim",
         "model.init_args.sampler_kwargs": {"num_steps": p.digits_ddpm_steps} if r.ddpm else
         {"num_steps": p.digits_ddim_steps, "eta": 0.0}}
    needs = ["digits-cfg"]
    if r.classifier:
        e[guide_checkpoint(0)] = plan.product(r.classifier)
        needs.append(r.classifier)
    sample = plan.sample(r.sample, r.config, f"digits/samples_{r.key}", "digits-cfg", {**e, **r.edits}, needs)
    plan.grade(sample, "digits-judge", image_edits(p, "grade"))


# ---- reading ------------------------------------------------------------------------------------------------------
def read_table(path: str | Path) -> dict:
    """``{"scales": {"2": {metric: value}}, "real": {...}, "fd_name": ...}`` from a test step's metrics_table.json."""
    table = json.loads(Path(path).read_text())
    fd = table["fd_name"]
    out = {"fd_name": fd, "num_samples": table["num_samples_per_scale"], "scales": {}}
    for row in table["rows"]:
        m = row["metrics"]
        out["scales"][f"{row['scale']:g}"] = {"fd_digits" if k == fd else k: float(v) for k, v in m.items()}
    out["real"] = {("fd_digits" if k == fd else k): float(v) for k, v in table["real"].items()}
    return out


def read_tables(products: Products) -> dict[str, dict]:
    """The graded table of every run whose grading finished."""
    tables = {}
    for k, r in runs(products.preset).items():
        if products.ok(r.grade):
            try:
                tables[k] = read_table(products.step(r.grade).product)
            except (OSError, KeyError, ValueError):
                pass
    return tables


def run_table(rs: list[Run], tables: dict[str, dict], scale_name: str = "scale") -> list[str]:
    rows = [[r.label, s, *(fmt(m.get(k)) for k in METRICS)] for r in rs for s, m in tables[r.key]["scales"].items()]
    return md_table(["run", scale_name, *METRICS], rows)


def best(table: dict, key: str = "fd_digits", exclude_zero: bool = False) -> tuple[float, float]:
    """(scale, value) of the lowest ``key`` over a run's scales."""
    items = [(float(s), m[key]) for s, m in table["scales"].items() if not (exclude_zero and float(s) == 0)]
    return min(items, key=lambda kv: kv[1])


def fd(table: dict) -> dict[float, float]:
    return {float(s): m["fd_digits"] for s, m in table["scales"].items()}


def best_guided(table: dict) -> float:
    """The lowest fd_digits over a run's guided scales (above 0)."""
    return min(v for s, v in fd(table).items() if s > 0)


#: the likely reason of a disagreement measured on this small data, whatever the method
NOISE = ("small data: 8x8 digits, a few hundred samples per setting and briefly trained models; fd differences of "
         "this size are within sampling noise")
