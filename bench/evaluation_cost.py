"""Evaluation cost at scale: Fréchet statistics and improved precision/recall (k = 3) of N real and N generated
feature vectors of 512 dimensions, N = 10k and 50k: time and peak memory, each size in a fresh process (peak RSS
above that process's baseline after the features exist).

Features are Gaussian (the generated set shifted), so nothing depends on a network; the Fréchet distance is fed in
chunks of 1000 (its state is D + D^2 + 1 sums per set); precision/recall finds radii with faiss (exact, float32) and
tests ball membership in float64 row blocks of ``--block-mib``.

    python bench/evaluation_cost.py [--sizes 10000 50000] [--dim 512] [--block-mib 128] [--threads 1]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not an installed one

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def one_size(n: int, dim: int, block_mib: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    from lightning_guidance.metrics import FrechetDistance, GenerativePrecisionRecall

    class Identity(torch.nn.Module):
        num_features = dim

        def forward(self, x):
            return x

    g = torch.Generator().manual_seed(0)
    real = torch.randn(n, dim, generator=g)
    fake = torch.randn(n, dim, generator=g) * 1.02 + 0.02
    base = peak_rss_mib()
    start, cpu = time.perf_counter(), time.process_time()
    fd = FrechetDistance(Identity(), name="fd_bench")
    for part in real.split(1000):
        fd.update(part, real=True)
    for part in fake.split(1000):
        fd.update(part, real=False)
    fd_value = float(fd.compute())
    fd_s, fd_cpu = time.perf_counter() - start, time.process_time() - cpu
    fd_peak = peak_rss_mib()
    start, cpu = time.perf_counter(), time.process_time()
    pr = GenerativePrecisionRecall(k=3, knn_backend="faiss", block_bytes=block_mib * 2**20)
    for part in real.split(1000):
        pr.update(part, real=True)
    for part in fake.split(1000):
        pr.update(part, real=False)
    result = pr.compute()
    pr_s, pr_cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"n": n, "dim": dim, "fd_seconds": fd_s, "fd_cpu": fd_cpu, "fd": fd_value, "pr_seconds": pr_s,
            "pr_cpu": pr_cpu,
            "precision": float(result["precision"]), "recall": float(result["recall"]),
            "features_mib": 2 * n * dim * 4 / 2**20, "baseline_rss_mib": base,
            "fd_peak_above_baseline_mib": fd_peak - base, "peak_above_baseline_mib": peak_rss_mib() - base}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--block-mib", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(one_size(a.one, a.dim, a.block_mib, a.threads)))
        return
    from common import machine

    print(f"machine: {machine()} ({a.threads} thread(s) in each measuring process)")
    print("| N per set | D | Fréchet s (CPU s) | precision/recall s (CPU s) | peak RSS above baseline | features | P / R |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for n in a.sizes:
        done = subprocess.run([sys.executable, __file__, "--one", str(n), "--dim", str(a.dim), "--block-mib",
                               str(a.block_mib), "--threads", str(a.threads)], capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-2000:])
            raise SystemExit(done.returncode)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {n} | {a.dim} | {r['fd_seconds']:.1f} ({r['fd_cpu']:.1f}) | {r['pr_seconds']:.1f} ({r['pr_cpu']:.1f}) | "
              f"{r['peak_above_baseline_mib']:.0f} MiB | {r['features_mib']:.0f} MiB | "
              f"{r['precision']:.3f} / {r['recall']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
