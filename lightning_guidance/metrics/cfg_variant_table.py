"""The exact fractal table: every CFG variant at several scales, beside plain CFG and classifier guidance, scored
against the exact distribution (:func:`lightning_guidance.toy.exact_scores.score_samples`).

Same base model, same seeds (sample ``i`` has seed ``seed + i`` and class ``i % 2`` in every row), same sampler.
Classifier guidance runs at cfg scale 1 with classifier scale ``s - 1`` (the CFG difference of an ideal model is
``(s - 1)`` times the classifier's score). ``python scripts/cfg_variant_table.py --help`` loads the checkpoints and
writes the table.
"""

from __future__ import annotations

import time

import torch

from ..diffusion.cfg_rule import ClassifierFreeGuidance
from ..diffusion.noise import PerSampleNoise
from ..diffusion.sampling import sample
from ..guidance.cfg_variants import (AdaptiveProjectedGuidance, Autoguidance, CFGRescale, CFGZeroStar,
                                     GuidanceInterval, TangentialCFG)
from ..guidance.classifier import ClassifierGuidance
from ..toy import fractal_2d
from ..toy.exact_scores import score_samples

METRICS = ("mean_log_density", "median_log_density", "wrong_class_fraction", "sliced_wasserstein", "spread",
           "recall")


def fractal_variants(guide_checkpoint: str | None) -> dict[str, ClassifierFreeGuidance]:
    """The rules the table compares (the settings of the shipped configs/fractal/sample_*.yaml)."""
    rules = {"cfg": ClassifierFreeGuidance(),
             "interval": GuidanceInterval(sigma_lo=0.28, sigma_hi=5.42),
             "rescale": CFGRescale(guidance_rescale=0.7),
             "apg": AdaptiveProjectedGuidance(eta=0.0, momentum=-0.5, norm_threshold=15.0),
             "apg (paper form)": AdaptiveProjectedGuidance(eta=0.0, momentum=-0.5, norm_threshold=15.0,
                                                           use_original_formulation=True),
             "cfg_zero_star": CFGZeroStar(zero_init_steps=1, space="x0"),
             "tangential": TangentialCFG()}
    if guide_checkpoint:
        rules["autoguidance"] = Autoguidance(guide_checkpoint)
    return rules


def variant_table(diffusion, rules: dict[str, ClassifierFreeGuidance], scales: list[float], *, guide=None,
                  classifier=None, samples_per_class: int = 1000, sampler: str = "ddim",
                  sampler_kwargs: dict | None = None, seed: int = 0, batch_size: int = 2000,
                  keep_samples: dict | None = None) -> list[dict]:
    """One row per (method, scale): the exact scores and the sampling time. ``diffusion`` is a ``CFGDiffusion`` on
    the 2D fractal, ``guide`` autoguidance's worse model, ``classifier`` a noisy fractal classifier (or None).
    ``keep_samples``: a dict that receives ``(method, scale) -> (samples, labels)`` of every row (scale None for
    the exact samples)."""
    mixture = fractal_2d()
    n = 2 * samples_per_class
    labels = torch.arange(n) % 2
    seeds = torch.arange(n) + seed
    kwargs = dict(sampler_kwargs or {})

    def run(cfg_scale, rule=None, terms=()):
        out, start = [], time.perf_counter()
        for lo in range(0, n, batch_size):
            sl = slice(lo, lo + batch_size)
            denoiser = diffusion.denoiser(cfg_scale, rule=rule, guide=guide if rule is not None and
                                          rule.guide_is_other_model else None)
            out.append(sample(sampler, denoiser, diffusion.schedule, labels[sl], PerSampleNoise(seeds[sl]),
                              diffusion.data_shape, guidance=list(terms), **kwargs))
        return torch.cat(out), time.perf_counter() - start

    rows = []

    def add(method, scale, x, seconds):
        if keep_samples is not None:
            keep_samples[(method, float(scale))] = (x, labels)
        rows.append({"method": method, "scale": float(scale), **score_samples(mixture, x, labels, seed=seed),
                     "seconds": round(seconds, 2)})

    add("conditional", 1.0, *run(1.0))
    for name, rule in rules.items():
        for s in scales:
            add(name, s, *run(s, rule))
    if classifier is not None:
        for s in scales:
            term = ClassifierGuidance(classifier, scale=s - 1.0)
            with torch.enable_grad():
                add("classifier_guidance", s, *run(1.0, terms=[term]))
    exact_x, exact_y = mixture.sample(n, labels=labels, generator=torch.Generator().manual_seed(seed + 12345))
    if keep_samples is not None:
        keep_samples[("exact samples", None)] = (exact_x, exact_y)
    rows.append({"method": "exact samples", "scale": float("nan"), **score_samples(mixture, exact_x, exact_y, seed=seed),
                 "seconds": 0.0})
    return rows


def markdown(rows: list[dict], intro: str) -> str:
    lines = [intro, "", "| method | scale | mean log p(x given y) ↑ | median log p ↑ | wrong-class rate ↓ | sliced W2 ↓ "
             "| spread (1 = exact) | recall ↑ | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        scale = "—" if r["scale"] != r["scale"] else f"{r['scale']:g}"
        lines.append(f"| {r['method']} | {scale} | {r['mean_log_density']:.3f} | {r['median_log_density']:.3f} | "
                     f"{r['wrong_class_fraction']:.4f} | "
                     f"{r['sliced_wasserstein']:.4f} | {r['spread']:.3f} | {r['recall']:.3f} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def best_at_equal_wrong_class_rate(rows: list[dict], budget: float) -> list[tuple[str, dict]]:
    """Per method, its row with the highest mean log-density among those whose wrong-class rate is <= ``budget``."""
    best: dict[str, dict] = {}
    for r in rows:
        if r["method"] in ("exact samples",) or r["wrong_class_fraction"] > budget:
            continue
        if r["method"] not in best or r["mean_log_density"] > best[r["method"]]["mean_log_density"]:
            best[r["method"]] = r
    return sorted(best.items(), key=lambda kv: -kv[1]["mean_log_density"])
