"""Sampling throughput and the sampler's own overhead, measured in one run.

Times are CPU seconds of the (single-threaded) measuring process (``time.process_time``): on a machine shared with
other jobs, wall time mostly measures the others; the processes comparison needs wall time and says so.

- throughput (samples/s) of DDIM with CFG (one doubled-batch forward per step) against the batch size, 1 ... 512;
- the sampler's overhead per step: (time per step - one network forward of the same batch) / that forward, i.e. what
  the sampler, the guidance plumbing and the per-sample noise add on top of the network (goal <= 5 %);
- throughput against processes (1 and 2): the same samples split between processes (each rank's share, as predict
  does), each process one thread, wall time of the whole.

Digits UNet of configs/digits/cfg.yaml with random weights (the cost does not depend on them).

    python bench/sampling_throughput.py [--steps 10] [--max-batch 512] [--png bench/sampling_throughput.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not an installed one

import argparse
import json
import os
import time

import torch
import torch.multiprocessing as mp

from common import digits_unet, interleaved_medians, machine
from lightning_guidance.diffusion.denoiser import NetDenoiser
from lightning_guidance.diffusion.guidance_setting import GuidanceSetting
from lightning_guidance.diffusion.noise import PerSampleNoise
from lightning_guidance.diffusion.sampling import sample
from lightning_guidance.diffusion.schedules import VPSchedule

CFG_SCALE = 3.0


def sampler_for(unet, steps: int):
    schedule = VPSchedule.from_name("cosine", 1000)

    def run(ids: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return sample("ddim", NetDenoiser(unet, 10, "eps", GuidanceSetting(CFG_SCALE), clip_x0=True), schedule, ids % 10,
                          PerSampleNoise(ids), (1, 8, 8), num_steps=steps)
    return run


def forward_for(unet, batch: int):
    """One network forward as the CFG denoiser makes it: the doubled batch (conditional and null class)."""
    x, t = torch.randn(2 * batch, 1, 8, 8), torch.rand(2 * batch)
    y = torch.cat([torch.arange(batch) % 10, torch.full((batch,), 10)])

    def run():
        with torch.inference_mode():
            return unet(x, t, y)
    return run


def _worker(rank: int, world: int, total: int, batch: int, steps: int, out: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    run = sampler_for(digits_unet().eval(), steps)
    mine = torch.arange(rank, total, world)
    start = time.perf_counter()
    for chunk in mine.split(batch):
        run(chunk)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"start": start, "end": time.perf_counter()}, f)


def processes_throughput(world: int, total: int, batch: int, steps: int, tmp: str) -> float:
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(r, world, total, batch, steps, tmp)) for r in range(world)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=1800)
    wall = time.perf_counter() - start
    assert all(p.exitcode == 0 for p in procs)
    return total / wall


def main() -> None:
    import tempfile

    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--max-batch", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--total", type=int, default=1024, help="samples for the processes comparison")
    p.add_argument("--png", default="bench/sampling_throughput.png")
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    unet = digits_unet().eval()
    run = sampler_for(unet, a.steps)
    batches = [2**i for i in range(0, a.max_batch.bit_length()) if 2**i <= a.max_batch]
    rows = []
    print(f"machine: {machine()}")
    print(f"DDIM {a.steps} steps, CFG {CFG_SCALE:g} (doubled batch), digits UNet, {a.repeats} interleaved repeats, "
          "CPU seconds of this process")
    print(f"| batch | samples/s | s per step | forward s | overhead |\n|---:|---:|---:|---:|---:|")
    for b in batches:
        ids = torch.arange(b)
        times = interleaved_medians({"sample": lambda: run(ids), "forward": forward_for(unet, b)}, a.repeats,
                                    clock=time.process_time)
        per_step, forward = times["sample"] / a.steps, times["forward"]
        rows.append({"batch": b, "samples_per_s": b / times["sample"], "step_s": per_step, "forward_s": forward,
                     "overhead": per_step / forward - 1})
        r = rows[-1]
        print(f"| {b} | {r['samples_per_s']:.1f} | {per_step:.5f} | {forward:.5f} | {100 * r['overhead']:+.1f} % |",
              flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        procs = {w: processes_throughput(w, a.total, 64, a.steps, tmp) for w in (1, 2)}
    print(f"\nprocesses (wall time; {a.total} samples, batch 64 per process, 1 thread each): 1 -> {procs[1]:.1f} samples/s, "
          f"2 -> {procs[2]:.1f} samples/s ({procs[2] / procs[1]:.2f}x)")
    if a.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        left.loglog([r["batch"] for r in rows], [r["samples_per_s"] for r in rows], "o-", label="1 process")
        left.scatter([64, 64], [procs[1], procs[2]], marker="x", color="red", zorder=3,
                     label=f"1 vs 2 processes, batch 64: {procs[1]:.0f} vs {procs[2]:.0f}")
        left.set(xlabel="batch size", ylabel="samples / CPU s (crosses: wall)", title=f"DDIM {a.steps} steps, CFG (doubled batch)")
        left.legend(fontsize=8)
        right.semilogx([r["batch"] for r in rows], [100 * r["overhead"] for r in rows], "o-")
        right.axhline(5, color="gray", ls="--", label="goal 5 %")
        right.set(xlabel="batch size", ylabel="% of one network forward (CPU time)", title="sampler overhead per step")
        right.legend(fontsize=8)
        fig.suptitle(machine(), fontsize=8)
        fig.tight_layout()
        fig.savefig(a.png, dpi=100)
        print(f"plot: {a.png}")


if __name__ == "__main__":
    main()
