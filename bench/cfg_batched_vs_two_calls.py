"""Classifier-free guidance as one doubled-batch forward (NetDenoiser) vs two network calls (cond, then null).

Same net, same inputs; prints the time ratio (batched / two calls, goal < 1) and the largest difference of the
guided eps (they must agree to float rounding).

    python bench/cfg_batched_vs_two_calls.py [--batch 64] [--repeats 20] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch

from common import digits_unet, interleaved_medians, machine
from lightning_guidance.diffusion.denoiser import NetDenoiser
from lightning_guidance.diffusion.guidance_setting import GuidanceSetting


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--scale", type=float, default=3.0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = digits_unet().eval()
    for prm in net.parameters():  # leave ADM's zero init, so that eps is not identically 0
        prm.data.add_(0.02 * torch.randn_like(prm))
    x, t = torch.randn(a.batch, 1, 8, 8), torch.rand(a.batch)
    abar, y = torch.rand(a.batch) * 0.9 + 0.05, torch.randint(0, 10, (a.batch,))
    denoiser = NetDenoiser(net, 10, setting=GuidanceSetting(a.scale), clip_x0=False)

    @torch.no_grad()
    def batched():
        return denoiser(x, t, abar, y).eps

    @torch.no_grad()
    def two_calls():
        eps_c, eps_u = net(x, t, y), net(x, t, torch.full_like(y, 10))
        return eps_u + a.scale * (eps_c - eps_u)

    diff = (batched() - two_calls()).abs().max().item()
    times = interleaved_medians({"batched": batched, "two_calls": two_calls}, a.repeats)
    print(f"machine: {machine()}")
    print(f"batch {a.batch}: one doubled forward {times['batched'] * 1e3:.2f} ms, two calls {times['two_calls'] * 1e3:.2f} ms")
    print(f"ratio batched / two calls: {times['batched'] / times['two_calls']:.3f}; max |eps difference| {diff:.2e}")


if __name__ == "__main__":
    main()
