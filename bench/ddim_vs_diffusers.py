"""Our ``ddim_sample`` against a loop over diffusers' ``DDIMScheduler`` on the same small net.

Both walk the same respaced grid (improved-DDPM / diffusers "linspace" indices): diffusers runs on the respaced
betas with one inference step per kept index and the network called at the original index. Prints the time
ratio (ours / diffusers, median of the repeats) and the largest absolute difference between the samples.

    python bench/ddim_vs_diffusers.py [--batch 64] [--steps 50] [--eta 0] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from lightning_guidance.diffusion.ddim import ddim_sample
from lightning_guidance.diffusion.denoiser import NetDenoiser
from lightning_guidance.diffusion.noise import PerSampleNoise
from lightning_guidance.diffusion.schedules import VPSchedule


class SmallConvNet(nn.Module):
    """A random class-conditional conv net ``net(x, t, y)`` on 1x8x8 images."""

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.embed = nn.Embedding(num_classes + 1, width)
        self.time = nn.Linear(2, width)
        self.inp = nn.Conv2d(1, width, 3, padding=1)
        self.body = nn.Sequential(nn.SiLU(), nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, x, t, y):
        cond = self.time(torch.stack([torch.sin(3 * t), torch.cos(3 * t)], 1)) + self.embed(y)
        return self.body(self.inp(x) + cond[:, :, None, None])


def diffusers_ddim(net, schedule: VPSchedule, y, seeds, shape, steps: int, eta: float, clip: bool) -> torch.Tensor:
    _, kept = schedule.respace(steps)
    abar = schedule.alphas_cumprod[kept].numpy()
    betas = 1 - abar / np.concatenate([[1.0], abar[:-1]])
    scheduler = DDIMScheduler(num_train_timesteps=steps, trained_betas=betas, set_alpha_to_one=True,
                              timestep_spacing="leading", steps_offset=0, clip_sample=clip)
    scheduler.set_timesteps(steps)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    x = randn_tensor((len(seeds), *shape), generator=gens)
    t_model = (kept.double() / (schedule.num_train_steps - 1)).float()
    for t in scheduler.timesteps:
        eps = net(x, t_model[t].expand(len(seeds)), y)
        x = scheduler.step(eps, t, x, eta=eta, use_clipped_model_output=clip,
                           generator=gens if eta > 0 else None).prev_sample
    return x


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--eta", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-clip", dest="clip", action="store_false")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    net, schedule, shape = SmallConvNet().eval(), VPSchedule.linear(1000), (1, 8, 8)
    seeds = list(range(args.batch))
    y = torch.arange(args.batch) % 10
    denoiser = NetDenoiser(net, num_classes=10, clip_x0=args.clip)

    with torch.inference_mode():
        ours_fn = lambda: ddim_sample(denoiser, schedule, y, PerSampleNoise(seeds), shape,  # noqa: E731
                                      num_steps=args.steps, eta=args.eta)
        theirs_fn = lambda: diffusers_ddim(  # noqa: E731
            net, schedule, y, seeds, shape, args.steps, args.eta, args.clip)
        ours_fn(), theirs_fn()  # warm-up
        t_ours, x_ours = timed(ours_fn, args.repeats)
        t_theirs, x_theirs = timed(theirs_fn, args.repeats)

    print(f"DDIM, batch {args.batch}, {args.steps} steps, eta {args.eta}, clip_x0 {args.clip}, "
          f"{args.threads} thread(s), median of {args.repeats}")
    print(f"ours      {t_ours * 1e3:8.1f} ms")
    print(f"diffusers {t_theirs * 1e3:8.1f} ms")
    print(f"time ratio (ours / diffusers): {t_ours / t_theirs:.3f}")
    diff = (x_ours - x_theirs).abs().max().item()
    print(f"max |ours - diffusers|: {diff:.3e}  (relative to max |x| = {x_theirs.abs().max().item():.3g}: "
          f"{diff / x_theirs.abs().max().item():.1e})")


if __name__ == "__main__":
    main()
