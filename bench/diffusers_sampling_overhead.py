"""The suite's sampling of a diffusers DiT read from a save_pretrained folder against diffusers' own bare loop.

Ours: ``sample_batches`` on ``PretrainedDiffusion`` (the folder's scheduler mapped, CFG as one doubled batch, DDIM).
Theirs: ``DiTPipeline``'s loop written out without the pipeline (no progress bar, no decoding): the transformer on
the doubled batch, CFG on the eps channels, ``DDIMScheduler.step``. Same seeds, so the samples must agree (printed).
The DiT is random-initialised at DiT-S/2's size by default (weights do not change the cost); the VAE is not timed.
Prints the time ratio (ours / bare loop, median of interleaved repeats; goal <= 1.03). On the CPU the clock is
the process's CPU time (a machine shared with other jobs disturbs it far less than wall time); on CUDA, wall time
with the device synchronised.

    python bench/diffusers_sampling_overhead.py [--depth 12] [--width 384] [--latent 32] [--batch 2] [--steps 10]
        [--scale 4] [--repeats 3] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel
from diffusers.utils.torch_utils import randn_tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians, machine  # noqa: E402

from lightning_guidance.diffusion.guidance_setting import GuidanceSetting  # noqa: E402
from lightning_guidance.diffusion.sampling import sample_batches  # noqa: E402
from lightning_guidance.modules.pretrained_diffusion import PretrainedDiffusion  # noqa: E402


def save_model(folder: Path, depth: int, width: int, latent: int) -> None:
    torch.manual_seed(0)
    heads = max(width // 64, 1)
    DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=width // heads, in_channels=4, out_channels=8,
                          num_layers=depth, sample_size=latent).save_pretrained(folder / "transformer")
    AutoencoderKL(latent_channels=4, block_out_channels=(8,), norm_num_groups=4).save_pretrained(folder / "vae")
    DDIMScheduler(clip_sample=False, set_alpha_to_one=True).save_pretrained(folder / "scheduler")


@torch.no_grad()
def bare_loop(transformer, scheduler, labels: torch.Tensor, seeds: list[int], steps: int, scale: float,
              device: torch.device) -> torch.Tensor:
    """DiTPipeline's denoising loop, as diffusers writes it, without the pipeline around it."""
    channels, size = transformer.config.in_channels, transformer.config.sample_size
    x = randn_tensor((len(seeds), channels, size, size), generator=[torch.Generator().manual_seed(s) for s in seeds],
                     device=device)
    y = torch.cat([labels, torch.full_like(labels, transformer.config.num_embeds_ada_norm)])
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        both = transformer(torch.cat([x, x]), timestep=t.expand(2 * len(seeds)).to(device), class_labels=y).sample
        cond, uncond = both[:, :channels].chunk(2)
        x = scheduler.step(uncond + scale * (cond - uncond), t, x).prev_sample
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="a small DiT (depth 4, width 128, latent 16)")
    args = parser.parse_args()
    if args.quick:
        args.depth, args.width, args.latent = 4, 128, 16
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        save_model(Path(tmp), args.depth, args.width, args.latent)
        model = PretrainedDiffusion(tmp).to(device)
    transformer, scheduler = model.net.transformer, DDIMScheduler(clip_sample=False, set_alpha_to_one=True)
    labels, seeds = torch.arange(args.batch, device=device) % 1000, list(range(args.batch))

    def ours():
        return sample_batches(model, labels, seeds, sampler="ddim", sampler_kwargs={"num_steps": args.steps},
                              setting=GuidanceSetting(args.scale))[0]

    def theirs():
        return bare_loop(transformer, scheduler, labels, seeds, args.steps, args.scale, device)

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = interleaved_medians({"ours": lambda: (ours(), sync()), "theirs": lambda: (theirs(), sync())},
                                args.repeats, clock=time.perf_counter if cuda else time.process_time)
    difference = (ours() - theirs()).abs().max().item()
    print(f"machine: {machine()}, device {device}")
    print(f"DiT depth {args.depth}, width {args.width}, latents 4x{args.latent}x{args.latent}, batch {args.batch} "
          f"(CFG {args.scale:g}: {2 * args.batch} per forward), {args.steps} DDIM steps")
    print(f"ours {times['ours']:.3f} s, bare diffusers loop {times['theirs']:.3f} s, max |ours - theirs|: "
          f"{difference:.1e}")
    print(f"time ratio (adapter / bare diffusers loop, {'wall' if cuda else 'CPU'} time, median of {args.repeats}): "
          f"{times['ours'] / times['theirs']:.3f} (goal <= 1.03)")


if __name__ == "__main__":
    main()
