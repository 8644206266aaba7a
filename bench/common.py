"""Shared bench helpers: thread pinning, a timed median, and the digits-sized UNet preset."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from lightning_guidance.nets import UNet


def digits_unet(model_channels: int = 32) -> UNet:
    """The tiny digits preset of configs/digits/cfg.yaml (random init; weights do not change the cost)."""
    return UNet(data_shape=(1, 8, 8), num_classes=10, model_channels=model_channels, num_res_blocks=1,
                channel_mult=(1, 2))


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1,
                   clock: Callable[[], float] = time.perf_counter) -> float:
    """``clock``: wall time by default; ``time.process_time`` counts only this process's CPU time, which a machine
    shared with other jobs disturbs far less (for single-threaded runs)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int,
                        clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median time of each function, run in turns (A, B, A, B, ...) so that load drifts hit both alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def machine() -> str:
    import os
    import platform

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, " \
           f"{torch.get_num_threads()} threads"
