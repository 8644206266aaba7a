"""What post-processing costs next to sampling the same samples: DDIM (50 steps, CFG as one doubled batch, the
configs/digits/sampling.yaml sampler) against the flow's integration (Euler, 20 steps, the
configs/digits/flow.yaml default; and dopri5 with its NFE), digits-sized UNets (the cost does not depend on the
weights, except dopri5's NFE: give a trained flow with --flow-checkpoint; random-init layers are perturbed so the
field is not zero). Timed in turns, medians.

    python bench/flow_postprocess_cost.py [--batch 250] [--repeats 3] [--threads 1] [--flow-checkpoint PATH]
"""

from __future__ import annotations

import argparse

import torch

from common import digits_unet, interleaved_medians, machine
from lightning_guidance.diffusion.denoiser import NetDenoiser
from lightning_guidance.diffusion.guidance_setting import GuidanceSetting
from lightning_guidance.diffusion.noise import PerSampleNoise
from lightning_guidance.diffusion.sampling import sample
from lightning_guidance.diffusion.schedules import VPSchedule
from lightning_guidance.flow.integrate import integrate


def perturbed(net: torch.nn.Module) -> torch.nn.Module:
    for p in net.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    return net.eval().requires_grad_(False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--ddim-steps", type=int, default=50)
    ap.add_argument("--euler-steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--flow-checkpoint", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    diffusion = perturbed(digits_unet())
    flow = digits_unet()
    source = "random init, perturbed"
    if args.flow_checkpoint:
        state = torch.load(args.flow_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        flow = digits_unet(int(state["net.time_embed.mlp.0.weight"].shape[1]))
        flow.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
        source = args.flow_checkpoint
    flow = flow.eval().requires_grad_(False) if args.flow_checkpoint else perturbed(flow)
    schedule = VPSchedule.from_name("cosine", 1000)
    labels = torch.arange(args.batch) % 10
    seeds = list(range(args.batch))
    x0 = torch.randn(args.batch, 1, 8, 8).clamp(-1, 1)
    nfe = {}

    def base():
        sample("ddim", NetDenoiser(diffusion, 10, "eps", GuidanceSetting(2.5), True), schedule, labels, PerSampleNoise(seeds), (1, 8, 8),
               num_steps=args.ddim_steps, eta=0.0)

    def post(method):
        def run():
            options = {"num_steps": args.euler_steps} if method == "euler" else {"rtol": 1e-5, "atol": 1e-5}
            sol = integrate(lambda x, t: flow(x, t, labels), x0, method, **options)
            nfe[method] = sol.nfe
        return run

    with torch.inference_mode():
        times = interleaved_medians({"base": base, "euler": post("euler"), "dopri5": post("dopri5")}, args.repeats)
    print(f"machine: {machine()}; flow weights: {source}")
    print(f"batch {args.batch}: DDIM {args.ddim_steps} steps, CFG doubled batch: {times['base']:.3f} s")
    for m in ("euler", "dopri5"):
        print(f"  {m}: {times[m]:.3f} s, NFE {nfe[m]}, ratio to sampling {times[m] / times['base']:.3f}")


if __name__ == "__main__":
    main()
