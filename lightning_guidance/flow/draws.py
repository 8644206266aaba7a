"""Per-sample seeded draws: which of its top-k real neighbours a generated sample is paired with, and at what time.

Each generated sample has a key (from its sampling seed and its swept value: the same seed recurs at every
value). At training step ``s`` the pair is ``(choice, t) = f(key, s, run seed)`` through the splitmix64 mixer
(Steele et al., OOPSLA 2014), so a draw depends neither on the batch a sample lands in nor on the number of
processes, and a resumed run draws exactly what a straight run draws (no RNG state to checkpoint).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (x.astype(np.uint64) + _GOLDEN).astype(np.uint64)
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def sample_keys(seeds: Tensor, values: Tensor) -> Tensor:
    """One int64 key per generated sample from its sampling seed and its (float64) swept value."""
    s = np.asarray(seeds.cpu().numpy(), dtype=np.int64).view(np.uint64)
    c = np.asarray(values.cpu().numpy(), dtype=np.float64).view(np.uint64)
    return torch.from_numpy(splitmix64(splitmix64(s) ^ c).view(np.int64).copy())


def draw_neighbour_and_time(keys: Tensor, step: int, seed: int, k: int) -> tuple[Tensor, Tensor]:
    """``(choice (B,) int64 in [0, k), t (B,) float32 in [0, 1))`` for samples ``keys`` at training ``step``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    base = splitmix64(np.array([seed * 1_000_003 + step], dtype=np.int64).view(np.uint64))
    with np.errstate(over="ignore"):
        z = splitmix64(keys.cpu().numpy().astype(np.int64).view(np.uint64) ^ base)
        z2 = splitmix64(z)
    choice = torch.from_numpy((z % np.uint64(k)).astype(np.int64))
    t = torch.from_numpy(((z2 >> np.uint64(11)).astype(np.float64) * 2.0 ** -53).astype(np.float32))
    return choice.to(keys.device), t.to(keys.device)
