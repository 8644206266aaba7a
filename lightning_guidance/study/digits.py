"""The steps and readers that the image sections (4 to 9) share: scikit-learn's 8x8 digits, or MNIST / CIFAR-10 in the
``full`` presets.

Every guided sampling run (:class:`Run`, all declared in :func:`runs`) is, for each training seed of the preset, a
``predict`` of ``configs/digits/sampling.yaml`` (with a ``configs/guidance/`` file) from that seed's models and a
``test`` of its shards with ``configs/digits/grade_with_judge.yaml``. The models a claim rests on (the CFG model, the
noisy and the clean classifier) are trained once per training seed; the judge is an instrument, trained once. The
sections read what each test wrote (:func:`graded`; each figure's 95 % interval, the run tables and the paired
contrasts: ``metrics.graded``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..metrics.graded import FIGURES, Graded
from ..launch.steps import DELETE
from .plan import SWEEP_VALUES, Plan, guide_checkpoint, seeded, term
from ..launch.products import Products

TERM0 = term(0)
METRICS = FIGURES  # the judge's figures, each with its interval
#: EluCD's DDPM reference settings (app. C): every ablation changes one of them
REFERENCE = {"tau1": 1.0, "tau2": 0.5, "gamma": 0.3}
DATA = "scikit-learn's 8x8 digits (embedded; the full presets: MNIST or CIFAR-10 under data/)"
SAMPLING = "digits/sampling.yaml"  # the sampling skeleton every run starts from (CFG alone)
SIZES = ("training_seeds", "digits_train_steps", "digits_judge_steps", "digits_model_channels",
         "digits_samples_per_class",
         "digits_ddim_steps", "digits_ddpm_steps", "dataset", "accelerator")


def with_guidance(name: str) -> tuple[str, str]:
    """The digits sampling config combined with ``configs/guidance/<name>.yaml``."""
    return SAMPLING, f"guidance/{name}.yaml"


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
    shape = {"model.init_args.net.init_args.data_shape": list(module.data_shape)}
    return {"calibrate": {"data.init_args.data": data}, "grade": {"data": data},
            "flow": {"data.init_args.real": data, **shape}}.get(kind, {"data": data, **shape})


@dataclass
class Run:
    """One guided sampling run: what it samples and which section reports it."""
    key: str
    label: str
    section: str
    config: str | tuple[str, ...]  # shipped configs, combined in order
    scales: list[float]
    classifier: str | None = None  # the fit step of its guide (None: CFG only)
    edits: dict = field(default_factory=dict)
    ddpm: bool = True
    seeds: tuple[int, ...] | None = None  # only these training seeds (default: the preset's)
    reference: tuple[str, str] | None = None  # (run, scale) its figures are paired with (default: digits_cg.reference)

    @property
    def sample(self) -> str:
        """Its predict step at training seed 0 (seed s: ``seeded(run.sample, s)``)."""
        return f"sample-digits-{self.key}"

    @property
    def grade(self) -> str:
        return f"grade-digits-{self.key}"

    def training_seeds(self, p) -> tuple[int, ...]:
        return tuple(s for s in p.training_seeds if self.seeds is None or s in self.seeds)

    def grades(self, p, by: str = "") -> list[str]:
        """Its test steps, one per training seed of the run (``by``: those of another judge, Plan.grade)."""
        return [seeded(self.grade.replace("grade-", f"grade-{by}-") if by else self.grade, s)
                for s in self.training_seeds(p)]


def offtheshelf_key(tau2: float, gamma: float) -> str:
    return f"ots-tau{tau2:g}-gamma{gamma:g}"


def runs(p) -> dict[str, Run]:
    """Every sampling run of the image sections, in report order."""
    sweep = sorted(p.cg_scales)
    guided = [s for s in sweep if s > 0]  # the unguided baseline (0) is sampled by the plain CG runs only
    noisy, clean = with_guidance("cg"), with_guidance("offtheshelf")
    out = [Run("cfg", "CFG", "digits_cfg", SAMPLING, p.cfg_fine_scales, ddpm=False),
           Run("cg-noisy", "CG, noisy classifier on x_t", "digits_cg", noisy, sweep, "digits-classifier"),
           Run("cg-clean", "CG, clean classifier on x0_hat", "digits_cg", clean, sweep, "digits-clean",
               {f"{TERM0}.init_args.tau2": 1.0, f"{TERM0}.init_args.sine_gamma": 0.0})]
    tau, gamma = REFERENCE["tau2"], REFERENCE["gamma"]
    for tau2, g in [*((t, gamma) for t in p.tau_ratios), *((tau, g) for g in p.sine_gammas)]:
        out.append(Run(offtheshelf_key(tau2, g), f"off-the-shelf, tau2/tau1={tau2:g}, gamma={g:g}", "digits_cg", clean,
                       guided, "digits-clean", {f"{TERM0}.init_args.tau2": tau2, f"{TERM0}.init_args.sine_gamma": g,
                                                f"{TERM0}.init_args.sine_reference": "linear-250"}))
    # CFG + classifier against CFG alone, both ancestral (DDPM) as EluCD samples DiT: DDIM's first step would
    # multiply the classifier's push by ~1300 on the cosine schedule (docs/math.md §2), DDPM's by its variance
    alone = ("cfg-ddpm", "1")
    out += [Run("cfg-ddpm", "CFG (DDPM)", "digits_cg", SAMPLING, [1.0, *p.cfg_plus_cg_scales], reference=alone),
            Run("cfg-plus-cg", "CFG + clean classifier (DDPM)", "digits_cg", with_guidance("cfg_plus_cg"),
                p.cfg_plus_cg_scales, "digits-clean", reference=alone),
            Run("cg-calibrated", "CG, Smooth-ECE fine-tuned classifier", "digits_calibration", noisy, guided,
                "digits-calibrated"),
            Run("cg-lambda0", "CG, fine-tuned with lambda = 0 (control)", "digits_calibration", noisy, guided,
                "digits-calibrated-lambda0"),
            Run("tilted", "tilted (clean classifier)", "digits_calibration", with_guidance("tilted"), guided,
                "digits-clean"),
            Run("entropy", "entropy-adaptive (clean classifier)", "digits_calibration", with_guidance("entropy"),
                guided, "digits-clean")]
    out += [Run(f"divergence-{d}", f"f-divergence {d} (clean classifier)", "digits_calibration",
                with_guidance("divergence"), guided, "digits-clean", {f"{TERM0}.init_args.divergence": d})
            for d in p.divergences]
    out += [Run(f"cg-T{t:g}", f"CG, noisy classifier at temperature {t:g}", "ece_vs_fd", noisy, guided,
                "digits-classifier", {f"{TERM0}.init_args.classifier.init_args.temperature": float(t)}, seeds=(0,))
            for t in p.temperatures]
    return {r.key: r for r in out}  # the ablation at the reference settings, in both loops, is listed once (first)


def of_section(p, section: str) -> list[Run]:
    return [r for r in runs(p).values() if r.section == section]


# ---- planning -----------------------------------------------------------------------------------------------------
def plan_base(plan: Plan) -> None:
    """The judge, the CFG model, and CFG's fine sweep (every image section compares with it)."""
    p = plan.preset
    fit_data = image_edits(p, "fit")
    plan.fit("digits-judge", "digits/judge.yaml", "digits/judge", p.digits_judge_steps, fit_data)
    for seed in p.training_seeds:
        plan.fit("digits-cfg", "digits/cfg.yaml", "digits/cfg", p.digits_train_steps,
                 {**fit_data, "model.init_args.net.init_args.model_channels": p.digits_model_channels,
                  "trainer.callbacks[SampleGrid]": DELETE}, seed=seed)
    plan_run(plan, runs(p)["cfg"], p.cfg_samples_per_class)


def plan_classifiers(plan: Plan) -> None:
    """The noisy classifier (on x_t) and its clean twin (on x0_hat), and the runs guided by each."""
    p = plan.preset
    edits = {**image_edits(p, "fit"), "model.init_args.net.init_args.model_channels": p.digits_model_channels}
    for seed in p.training_seeds:
        plan.fit("digits-classifier", "digits/classifier.yaml", "digits/classifier", p.digits_classifier_steps, edits,
                 seed=seed)
        plan.fit("digits-clean", "digits/clean_classifier.yaml", "digits/clean_classifier", p.digits_clean_steps,
                 edits, seed=seed)
    for key in ("cg-noisy", "cg-clean"):
        plan_run(plan, runs(p)[key])


def plan_run(plan: Plan, r: Run, samples_per_class: int | None = None, seeds: tuple[int, ...] | None = None,
             grade: bool = True) -> None:
    """The run's ``predict`` and (``grade``) the ``test`` that grades its shards with the judge, for each training seed
    (``seeds``: only these): the seed's CFG model and guide (a guide trained once, e.g. a fine-tune without seeds,
    serves every seed)."""
    p = plan.preset
    n = samples_per_class or p.digits_samples_per_class
    e = {SWEEP_VALUES: [float(s) for s in r.scales], "model.init_args.samples_per_class": n,
         "model.init_args.shard_size": 10 * n, "model.init_args.batch_size": 10 * n,
         "model.init_args.sampler": "ddpm" if r.ddpm else "ddim",
         "model.init_args.sampler_kwargs": {"num_steps": p.digits_ddpm_steps} if r.ddpm else
         {"num_steps": p.digits_ddim_steps, "eta": 0.0}}
    for seed in r.training_seeds(p) if seeds is None else seeds:
        needs = ["digits-cfg"]
        if r.classifier:
            guide = seeded(r.classifier, seed) if seeded(r.classifier, seed) in plan.steps else r.classifier
            e[guide_checkpoint(0)] = plan.product(guide)
            needs.append(guide)
        sample = plan.sample(r.sample, r.config, f"digits/samples_{r.key}", "digits-cfg", {**e, **r.edits}, needs,
                             seed=seed)
        if grade:
            plan.grade(sample, "digits-judge", image_edits(p, "grade"))


# ---- reading ------------------------------------------------------------------------------------------------------
def graded(products: Products, r: Run, by: str = "") -> Graded:
    """The run's grading at every training seed (``by``: another judge's), read once per report (its per-sample
    products stay cached with it); ``LookupError`` naming a test step that did not finish."""
    key = ("graded", r.key, by)
    if key not in products.memo:
        products.memo[key] = Graded.read([products.step(n).product for n in r.grades(products.preset, by)])
    return products.memo[key]


#: what limits every digits measurement, whatever the method (a disagreement's context, never a verdict)
SMALL_DATA = "small data: 8x8 digits, a few hundred samples per setting and briefly trained models"
