"""The study's sections, in report order: the one list that the runner, the report, the SLURM chain, ``--sections``
and ``--list`` read. Adding a section is one module declaring a :class:`~.section.Section` (its steps, its analysis,
its claims; see docs/architecture.md), its sizes in :class:`~.presets.Preset`, and its line here."""

from __future__ import annotations

from pathlib import Path

from . import (digits_calibration, digits_cfg, digits_cg, digits_grids, digits_postprocessor, ece_vs_fd, fractal,
               fractal_benchmark, quality, toy1d)
from .plan import Plan
from ..stats.claims import Claim
from .section import Section

SECTIONS: tuple[Section, ...] = (toy1d.SECTION, fractal.SECTION, fractal_benchmark.SECTION, digits_cfg.SECTION,
                                 digits_cg.SECTION, digits_calibration.SECTION, digits_postprocessor.SECTION,
                                 ece_vs_fd.SECTION, quality.SECTION, digits_grids.SECTION)
KEYS = tuple(s.key for s in SECTIONS)

NO_INCEPTION = "needs ImageNet or CIFAR-10 graded by an Inception network, which cannot be read offline"
#: the papers' claims that no section measures, each with why (the report lists them)
SCOPE: tuple[Claim, ...] = tuple(Claim(key, paper, claim, direction, None, "", why) for key, paper, claim, direction,
                                 why in (
    ("cfg_imagenet", "Ho & Salimans (CFG)", "CFG reaches classifier guidance's FID/IS trade-off on ImageNet 64 and "
     "128 without a classifier", "same trade-off", NO_INCEPTION + "; section 5 compares the two on digits only"),
    ("cfg_p_uncond", "Ho & Salimans (CFG)", "a small unconditional-training probability (0.1-0.2) is best",
     "best p_uncond 0.1-0.2", "one p_uncond (0.1) is trained; a sweep of retrained models exceeds the small preset"),
    ("elucd_imagenet", "Ma et al. (EluCD)", "calibrated off-the-shelf ResNets beat fine-tuned classifier guidance and "
     "CFG on ImageNet (DDPM, EDM, DiT) and guide text-to-image with CLIP", "lower FID",
     NO_INCEPTION + "; no pretrained ResNet, DiT or CLIP ships offline: our off-the-shelf guide is a clean digits "
     "classifier the suite trains"),
    ("elucd_recurrent", "Ma et al. (EluCD)", "more recurrent guidance steps do not improve FID", "flat FID",
     "recurrent (universal) guidance is not implemented"),
    ("calibration_imagenet", "Javid et al. (calibration)", "Jensen-Shannon guidance with a ResNet-101 reaches FID "
     "2.13 on ImageNet 128", "lower FID than prior classifier guidance", NO_INCEPTION),
    ("vanishing_gradients", "Javid et al. (calibration)", "overconfident classifiers make guidance gradients vanish "
     "early in denoising", "vanishing fraction high at large t", "the guidance-diagnostics callback records the "
     "vanishing fraction per step, but no section grades it"),
    ("postprocessor_cifar10", "Zhao & Schwing (classifier-centric)", "the post-processor lowers Inception FID on "
     "CIFAR-10 with EDM (their Tab. 2: 8.02 / 9.40 / 10.75 → 5.82 / 5.94 / 6.18)", "lower FID at every scale",
     NO_INCEPTION + "; section 7 asks the same question of a digits model with fd_digits"),
    ("entangled_fractal", "Zhao & Schwing (classifier-centric)", "on their 2D data of growing class entanglement, the "
     "post-processor helps at every level", "helps at every entanglement", "our fractal is Karras et al.'s "
     "(autoguidance) fractal, one level of entanglement, not Zhao & Schwing's entangled variants")))
CLAIMS = [*(claim for s in SECTIONS for claim in s.claims), *SCOPE]


def choose(keys: list[str] | None) -> list[str]:
    """The requested section keys in report order (all when none is named)."""
    unknown = [k for k in keys or () if k not in KEYS]
    if unknown:
        raise ValueError(f"unknown section {', '.join(unknown)}; choose from {', '.join(KEYS)}")
    return [k for k in KEYS if not keys or k in keys]


def with_inputs(keys: list[str]) -> list[Section]:
    """The requested sections and every section they read, in report order."""
    wanted = set(keys)
    for s in reversed(SECTIONS):  # a section reads only sections listed before it
        if s.key in wanted:
            wanted |= set(s.reads)
    return [s for s in SECTIONS if s.key in wanted]


def plan_study(preset, run_dir: Path, configs: Path, keys: list[str]) -> Plan:
    """Every step of the requested sections and of the sections they read (``plan.sections``)."""
    plan = Plan(preset, run_dir, configs)
    plan.sections = with_inputs(keys)
    for s in plan.sections:
        plan.section = s.key
        s.plan(plan)
    return plan
