"""What guidance costs: sampling time per guidance kind against unguided sampling, same sampler and steps, one run.

Digits-sized nets with random weights (the cost does not depend on the weights; ADM's zero-initialised layers are
perturbed so that no gradient is trivially zero): the UNet of configs/digits/cfg.yaml, the noisy EncoderClassifier
of configs/digits/classifier.yaml (attention pool) for classifier guidance, and the clean twin of
configs/digits/clean_classifier.yaml (adaptive pool) for the terms that read x0_hat. Sampling runs under
``torch.inference_mode()``, as Lightning's predict does. Kinds are timed in turns (A, B, C, ..., A, B, C, ...) so
that load drifts hit them alike; the table gives the median time and the ratio to unguided sampling on the
same sampler. Two comparisons inside it:

- EluCD's goal (off-the-shelf guidance at ~5 % more sampling time on ImageNet, where ResNet-50 is cheap next to the
  diffusion UNet): the ratio ``offtheshelf / unguided``; the classifier's own forward+backward cost relative to one
  UNet forward is printed too, since that is what the ratio mostly measures (a row with a 16-channel clean guide,
  4x cheaper, shows the ratio following it);
- the detached ``x0_hat`` gradient (EluCD's reference) against differentiating through the denoiser;
- through the denoiser as the samplers run it (backward through the step's own denoiser call) against the same
  term recomputing x0_hat with a second denoiser forward (how it ran before; ``SecondForward``);
- every kind against its floor, measured in the same run: ``(UNet forward [doubled batch under CFG] + the guide's
  forward+backward [+ the UNet's backward when differentiating through the denoiser]) / UNet forward``, i.e.
  ``1 + (classifier fwd+bwd) / (UNet fwd)`` for the plain kinds; the goal is a ratio within 5 % of its floor.

    python bench/guidance_cost.py [--batch 100] [--steps 50] [--sampler ddpm] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not an installed one

import argparse
import functools
import time

import torch

from common import digits_unet, interleaved_medians, machine
from lightning_guidance.diffusion.denoiser import NetDenoiser
from lightning_guidance.diffusion.guidance_setting import GuidanceSetting
from lightning_guidance.diffusion.noise import PerSampleNoise
from lightning_guidance.diffusion.sampling import sample
from lightning_guidance.diffusion.schedules import VPSchedule
from lightning_guidance.guidance import (CFGPlusClassifierGuidance, ClassifierGuidance, DivergenceGuidance,
                                         EntropyAdaptiveGuidance, OffTheShelfGuidance, TiltedGuidance)
from lightning_guidance.nets import EncoderClassifier

CFG_SCALE = 3.0


def perturbed(net: torch.nn.Module) -> torch.nn.Module:
    for p in net.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    return net.eval().requires_grad_(False)


def digits_classifier(pool: str, model_channels: int = 32) -> EncoderClassifier:
    return perturbed(EncoderClassifier(data_shape=(1, 8, 8), num_classes=10, model_channels=model_channels,
                                       num_res_blocks=1, channel_mult=(1, 2), pool=pool))


class SecondForward:
    """A term as it ran before the samplers kept their denoiser call's graph: not declaring that it differentiates
    through the denoiser, it recomputes x0_hat with a second denoiser forward at a leaf x_t (the comparison row)."""

    differentiates_denoiser = False

    def __init__(self, term):
        self.term, self.scale, self.supported_samplers = term, term.scale, term.supported_samplers

    def __call__(self, state):
        return self.term(state)

    def edm_nudge(self, *args, **kwargs):
        return None


def kinds(sampler: str, noisy, clean, small) -> dict[str, tuple[float, list]]:
    """name -> (cfg_scale, guidance terms); DDIM cannot take the DDPM sine boost, so it is dropped there."""
    sine = 0.3 if sampler == "ddpm" else 0.0
    out = {
        "unguided": (1.0, []),
        "cg (noisy, x_t)": (1.0, [ClassifierGuidance(noisy)]),
        "offtheshelf (x0_hat detached)": (1.0, [OffTheShelfGuidance(clean, tau2=0.5, sine_gamma=sine)]),
        "offtheshelf (x0_hat, 16-ch guide)": (1.0, [OffTheShelfGuidance(small, tau2=0.5, sine_gamma=sine)]),
        "offtheshelf (through denoiser)": (1.0, [OffTheShelfGuidance(clean, tau2=0.5, sine_gamma=sine,
                                                                     through_denoiser=True)]),
        "offtheshelf (through, 2nd forward)": (1.0, [SecondForward(OffTheShelfGuidance(
            clean, tau2=0.5, sine_gamma=sine, through_denoiser=True))]),
        "tilted (x0_hat)": (1.0, [TiltedGuidance(clean)]),
        "entropy (x0_hat)": (1.0, [EntropyAdaptiveGuidance(clean)]),
        "divergence js (x0_hat)": (1.0, [DivergenceGuidance(clean)]),
        f"cfg {CFG_SCALE:g} (no term)": (CFG_SCALE, []),
        f"cfg {CFG_SCALE:g} + cg (x0_hat)": (CFG_SCALE, [CFGPlusClassifierGuidance(clean)]),
    }
    if sampler == "edm":
        out["offtheshelf edm rule (nudge)"] = (1.0, [OffTheShelfGuidance(clean, tau2=0.0, sine_gamma=0.3,
                                                                         edm_g_max=0.004)])
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sampler", default="ddpm", choices=("ddpm", "ddim", "edm"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--png", default=None, help="also plot ratio and floor per kind to this PNG")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: this process's CPU time (robust on a machine shared with other jobs; 1 thread)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    unet, noisy, clean = perturbed(digits_unet()), digits_classifier("attention"), digits_classifier("adaptive")
    small = digits_classifier("adaptive", model_channels=16)  # a guide 4x cheaper than the clean twin
    schedule = VPSchedule.from_name("cosine", 1000)
    labels, seeds = torch.arange(a.batch) % 10, torch.arange(a.batch)

    def run(cfg_scale: float, terms: list) -> torch.Tensor:
        with torch.inference_mode():
            return sample(a.sampler, NetDenoiser(unet, 10, "eps", GuidanceSetting(cfg_scale), clip_x0=True), schedule, labels,
                          PerSampleNoise(seeds), (1, 8, 8), guidance=terms, num_steps=a.steps)

    # the floor's parts: one UNet forward vs one classifier forward+backward on the input (what one guided step
    # adds), the doubled CFG batch, the UNet's forward+backward to its input. Each is timed as a.steps calls (one per
    # sampler step) in the same interleaved rounds as the sampling runs, so that both sides of "x floor" share the
    # machine's load (timed once before the rounds, they measured another moment of a shared machine)
    x, t = torch.randn(a.batch, 1, 8, 8), torch.rand(a.batch)
    y2, x2, t2 = torch.cat([labels, torch.full_like(labels, 10)]), torch.cat([x, x]), torch.cat([t, t])

    def unet_forward_only(xx, tt, yy):
        with torch.inference_mode():
            unet(xx, tt, yy)

    def classifier_step(net, time):
        leaf = x.clone().requires_grad_(True)
        torch.autograd.grad(net(leaf, time).logsumexp(1).sum(), leaf)

    def unet_forward_backward():
        leaf = x.clone().requires_grad_(True)
        torch.autograd.grad(unet(leaf, t, labels).square().sum(), leaf)

    def per_step(fn):
        def steps():
            for _ in range(a.steps):
                fn()
        return steps

    parts = {"unet_forward": lambda: unet_forward_only(x, t, labels),
             "unet_forward_cfg": lambda: unet_forward_only(x2, t2, y2),
             "unet_fwd_bwd": unet_forward_backward,
             "clean_step": lambda: classifier_step(clean, None),
             "noisy_step": lambda: classifier_step(noisy, t),
             "small_step": lambda: classifier_step(small, None)}
    table = kinds(a.sampler, noisy, clean, small)
    times = interleaved_medians({**{f"part {name}": per_step(fn) for name, fn in parts.items()},
                                 **{name: functools.partial(run, *spec) for name, spec in table.items()}},
                                a.repeats, clock=clock)
    part = {name: times.pop(f"part {name}") / a.steps for name in parts}
    unet_forward, unet_forward_cfg, unet_fwd_bwd = part["unet_forward"], part["unet_forward_cfg"], part["unet_fwd_bwd"]
    clean_step, noisy_step, small_step = part["clean_step"], part["noisy_step"], part["small_step"]
    base = times["unguided"]
    print(f"machine: {machine()}")
    print(f"{a.sampler}, {a.steps} steps, batch {a.batch}; nets: digits UNet "
          f"({sum(q.numel() for q in unet.parameters()) / 1e3:.0f}k params), noisy EncoderClassifier "
          f"({sum(q.numel() for q in noisy.parameters()) / 1e3:.0f}k), clean EncoderClassifier "
          f"({sum(q.numel() for q in clean.parameters()) / 1e3:.0f}k); random init; {a.repeats} interleaved repeats; "
          f"{a.clock} time")
    print(f"one UNet forward {unet_forward * 1e3:.1f} ms; classifier forward+backward: clean "
          f"{clean_step * 1e3:.1f} ms ({clean_step / unet_forward:.2f}x), noisy {noisy_step * 1e3:.1f} ms "
          f"({noisy_step / unet_forward:.2f}x), 16-channel clean {small_step * 1e3:.1f} ms "
          f"({small_step / unet_forward:.2f}x)")
    print(f"UNet forward of the doubled CFG batch {unet_forward_cfg * 1e3:.1f} ms; UNet forward+backward to its input "
          f"{unet_fwd_bwd * 1e3:.1f} ms")

    def floor(name: str) -> float:
        """(network work per step of this kind) / (one unguided UNet forward), from the timings above."""
        work = unet_forward_cfg if name.startswith("cfg") else unet_forward
        if "noisy" in name:
            work += noisy_step
        elif "16-ch" in name:
            work += small_step
        elif name != "unguided" and "no term" not in name:
            work += clean_step
        if "through" in name:  # the same floor for the second-forward row: it shows what that forward costs
            work += unet_fwd_bwd - unet_forward  # the UNet's backward on top of its forward
        return work / unet_forward

    print()
    print(f"| {'guidance kind':34s} | {'seconds':>8s} | {'x unguided':>10s} | {'floor':>6s} | {'x floor':>7s} |")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 12}|{'-' * 8}|{'-' * 9}|")
    for name, sec in times.items():
        print(f"| {name:34s} | {sec:8.3f} | {sec / base:10.2f} | {floor(name):6.2f} | "
              f"{sec / base / floor(name):7.2f} |")
    if a.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(times)
        fig, ax = plt.subplots(figsize=(10, 4))
        pos = range(len(names))
        ax.bar([i - 0.2 for i in pos], [times[n] / base for n in names], width=0.4, label="guided / unguided")
        ax.bar([i + 0.2 for i in pos], [floor(n) for n in names], width=0.4, label="floor (network work)")
        ax.set_xticks(list(pos), names, rotation=30, ha="right", fontsize=7)
        ax.set(ylabel="x unguided sampling", title=f"guidance cost vs its floor ({a.sampler}, {a.steps} steps, "
                                                    f"batch {a.batch})")
        ax.legend(fontsize=8)
        fig.suptitle(machine(), fontsize=8)
        fig.tight_layout()
        fig.savefig(a.png, dpi=100)
        print(f"plot: {a.png}")
    detached = times["offtheshelf (x0_hat detached)"]
    through = times["offtheshelf (through denoiser)"]
    print()
    print(f"through the denoiser / detached x0_hat: {through / detached:.2f}x")
    print(f"through the denoiser with a second forward / through the step's own call: "
          f"{times['offtheshelf (through, 2nd forward)'] / through:.2f}x")
    cfg = times[f"cfg {CFG_SCALE:g} (no term)"]
    print(f"cfg + cg / cfg alone: {times[f'cfg {CFG_SCALE:g} + cg (x0_hat)'] / cfg:.2f}x")


if __name__ == "__main__":
    main()
