"""Peak memory per sample of classifier guidance through a latent model's VAE decoder, with and without
checkpointing the decoder's backward (``DecodedImageClassifier(checkpointing=...)``).

One guidance gradient ``∇_z log p(y | D(z))``: Stable Diffusion's VAE decoder (DiT's ``sd-vae-ft-ema`` architecture,
random weights: memory does not depend on them) from 4x32x32 latents to 256x256 images, into a torchvision
ResNet-50 with Softplus (EluCD's guide) at 224 px. Each setting runs in a fresh process; the peak is measured from
the models being loaded: on CUDA ``max_memory_allocated``, on the CPU the process's peak resident set (``VmHWM``,
reset through ``/proc/self/clear_refs`` after loading). Per sample: the peak at ``--batch`` divided by the batch.
Prints the memory ratio (checkpointed / not).

    python bench/diffusers_decoder_memory.py [--batch 2] [--image 256] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine  # noqa: E402


def resident_peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(checkpointing: bool, batch: int, image: int, device: str) -> dict:
    """One gradient through decoder and classifier; the peak memory above what the loaded models hold (MiB)."""
    from diffusers import AutoencoderKL

    from lightning_guidance.guidance.log_likelihood import log_likelihood
    from lightning_guidance.nets import DecodedImageClassifier, OffTheShelfClassifier

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                      down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                      sample_size=image).save_pretrained(Path(tmp) / "vae")
        classifier = OffTheShelfClassifier("torchvision", "resnet50", allow_random_init=True, softplus_beta=3.0)
        guide = DecodedImageClassifier(classifier, tmp, checkpointing=checkpointing).to(device)
    z = torch.randn(batch, 4, image // 8, image // 8, device=device)
    y = torch.arange(batch, device=device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # the peak resident set starts again from here
        base = resident_mb()
    start = time.perf_counter()
    leaf = z.requires_grad_(True)
    (grad,) = torch.autograd.grad(log_likelihood(guide(leaf), y, 1.0, 0.5).sum(), leaf)
    if cuda:
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = resident_peak_mb() - base
    assert torch.isfinite(grad).all()
    return {"peak_mb": peak, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--image", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="128 px images, batch 1")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.image, args.batch = 128, 1
    torch.set_num_threads(args.threads)
    if args.child is not None:
        print(json.dumps(measure(args.child == "on", args.batch, args.image, args.device)))
        return

    results = {}
    for setting in ("off", "on"):  # a fresh process each: the peak of one must not hide the other's
        command = [sys.executable, __file__, "--child", setting, "--batch", str(args.batch), "--image",
                   str(args.image), "--threads", str(args.threads), "--device", args.device]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[setting] = json.loads(out.strip().splitlines()[-1])
    print(f"machine: {machine()}, device {args.device}")
    print(f"gradient of log p(y | D(z)) through the SD VAE decoder ({args.image} px) and a ResNet-50, batch "
          f"{args.batch}")
    for setting, name in (("off", "without checkpointing"), ("on", "decoder checkpointed")):
        r = results[setting]
        print(f"{name}: peak {r['peak_mb']:.0f} MiB above the loaded models, {r['peak_mb'] / args.batch:.0f} MiB per "
              f"sample, {r['seconds']:.1f} s")
    print(f"peak memory ratio (checkpointed / not): {results['on']['peak_mb'] / results['off']['peak_mb']:.3f}")
    print(f"time ratio (checkpointed / not): {results['on']['seconds'] / results['off']['seconds']:.3f}")


if __name__ == "__main__":
    main()
