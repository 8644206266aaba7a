"""What each CFG variant costs: sampling time per CFG rule against plain CFG, same sampler, steps, seeds; one run.

Digits-sized nets with random weights (the cost does not depend on the weights): the UNet of configs/digits/cfg.yaml
as the main model; autoguidance's worse model is (a) the same UNet (what configs/digits/cfg_autoguide_bad.yaml trains:
fewer steps), run as one stacked forward (``torch.func`` vmap over the two weight sets) or as two calls, and (b) a
16-channel UNet (a smaller net: two calls). The attention-perturbation rules (PAG, SLG, SEG, at diffusers' default
step windows, on the UNet's middle attention block) add a third, perturbed forward at the steps of their window. Rules are timed in turns (A, B, C, ..., A, B, C, ...) so that load drifts
hit them alike; the table gives the median **CPU** seconds of this process (``time.process_time``, one thread: on a
shared machine wall time measures the neighbours' load, CPU time the work) and the ratio to plain CFG. The conditional model alone (scale 1, one
forward per step) is the lower bound; the guidance interval skips the null forward outside its noise levels, so it
sits between the two.

    python bench/cfg_variant_cost.py [--batch 100] [--steps 50] [--sampler ddim] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from common import digits_unet, machine
from lightning_guidance.diffusion.cfg_rule import ClassifierFreeGuidance
from lightning_guidance.diffusion.denoiser import NetDenoiser
from lightning_guidance.diffusion.guidance_setting import GuidanceSetting, WeakModel
from lightning_guidance.diffusion.noise import PerSampleNoise
from lightning_guidance.diffusion.sampling import sample
from lightning_guidance.diffusion.schedules import VPSchedule
from lightning_guidance.guidance.cfg_variants import (AdaptiveProjectedGuidance, Autoguidance, CFGRescale, CFGZeroStar,
                                                      FrequencyDecoupledGuidance, GuidanceInterval,
                                                      PerturbedAttentionGuidance, SkipLayerGuidance,
                                                      SmoothedEnergyGuidance, TangentialCFG)
from lightning_guidance.nets.attention_perturbation import PerturbedAttention

SCALE = 3.0


def perturbed(net: torch.nn.Module) -> torch.nn.Module:
    for p in net.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    return net.eval().requires_grad_(False)


def interleaved_cpu_medians(fns: dict, repeats: int) -> dict[str, float]:
    """Median CPU time of each function, run in turns after one warm-up round."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.process_time()
            fn()
            times[name].append(time.process_time() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sampler", default="ddim", choices=("ddpm", "ddim", "edm"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    unet, same_arch, small = perturbed(digits_unet()), perturbed(digits_unet()), perturbed(digits_unet(16))
    schedule = VPSchedule.from_name("cosine", 1000)
    labels, seeds = torch.arange(a.batch) % 10, torch.arange(a.batch)
    auto = Autoguidance("bench")
    rows = {
        "conditional (s = 1, one forward)": (1.0, None, None, True),
        "cfg": (SCALE, None, None, True),
        "interval (0.28, 5.42]": (SCALE, GuidanceInterval(sigma_lo=0.28, sigma_hi=5.42), None, True),
        "rescale 0.7": (SCALE, CFGRescale(0.7), None, True),
        "apg": (SCALE, AdaptiveProjectedGuidance(), None, True),
        "cfg-zero* (x0)": (SCALE, CFGZeroStar(space="x0"), None, True),
        "tangential": (SCALE, TangentialCFG(), None, True),
        "frequency-decoupled": (SCALE, FrequencyDecoupledGuidance(), None, True),
        "autoguidance, same UNet, stacked": (SCALE, auto, same_arch, True),
        "autoguidance, same UNet, two calls": (SCALE, auto, same_arch, False),
        "autoguidance, 16-ch UNet, two calls": (SCALE, auto, small, True),
        "perturbed-attention (steps 1-20 %)": (SCALE, PerturbedAttentionGuidance(layers=[0]), None, True),
        "skip-layer (steps 1-20 %)": (SCALE, SkipLayerGuidance(layers=[0]), None, True),
        "smoothed-energy, infinite blur": (SCALE, SmoothedEnergyGuidance(layers=[0]), None, True),
        "smoothed-energy, sigma 1": (SCALE, SmoothedEnergyGuidance(seg_blur_sigma=1.0, layers=[0]), None, True),
    }

    def run(scale: float, rule: ClassifierFreeGuidance | None, guide, batch_guide: bool) -> torch.Tensor:
        weak = None if rule is None or rule.perturbation is None else WeakModel(PerturbedAttention.for_rule(unet, rule))
        weak = WeakModel(guide) if guide is not None else weak
        denoiser = NetDenoiser(unet, 10, "eps", GuidanceSetting(scale, rule, weak), clip_x0=True,
                               batch_guide=batch_guide)
        with torch.inference_mode():
            return sample(a.sampler, denoiser, schedule, labels, PerSampleNoise(seeds), (1, 8, 8), num_steps=a.steps)

    times = interleaved_cpu_medians({name: functools.partial(run, *spec) for name, spec in rows.items()}, a.repeats)
    base = times["cfg"]
    print(f"machine: {machine()}")
    print(f"{a.sampler}, {a.steps} steps, batch {a.batch}, scale {SCALE:g}; digits UNet "
          f"({sum(q.numel() for q in unet.parameters()) / 1e3:.0f}k params), 16-channel UNet "
          f"({sum(q.numel() for q in small.parameters()) / 1e3:.0f}k); random init; {a.repeats} interleaved repeats")
    print()
    print(f"| {'CFG rule':38s} | {'CPU s':>8s} | {'x CFG':>6s} |")
    print(f"|{'-' * 40}|{'-' * 10}|{'-' * 8}|")
    for name, sec in times.items():
        print(f"| {name:38s} | {sec:8.3f} | {sec / base:6.2f} |")


if __name__ == "__main__":
    main()
