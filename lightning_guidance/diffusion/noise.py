"""Per-sample random streams, so that a sample depends on its seed only (not on batch size or world size).

Like EDM's ``StackedRandomGenerator``: one ``torch.Generator`` per sample, drawn on the CPU in float32 and
moved to the target device, so CPU and CUDA runs of one seed start from the same noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class PerSampleNoise:
    """One generator per sample id; ``randn(shape)`` returns a (B, *shape) tensor, row b from generator b."""

    def __init__(self, seeds: Sequence[int] | Tensor, device: torch.device | str = "cpu"):
        seeds = [int(s) for s in (seeds.tolist() if isinstance(seeds, Tensor) else seeds)]
        if not seeds:
            raise ValueError("need at least one seed")
        self.seeds = seeds
        self.device = torch.device(device)
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    def __len__(self) -> int:
        return len(self.seeds)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        rows = [torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(rows).to(device=self.device, dtype=dtype)

    def randn_like(self, x: Tensor) -> Tensor:
        if x.shape[0] != len(self):
            raise ValueError(f"batch of {x.shape[0]} but {len(self)} seeds")
        return self.randn(x.shape[1:], dtype=x.dtype).to(x.device)


class GlobalBatchDraws:
    """A rank's rows of the random draws made for a whole global training batch, so that what each training
    example draws (its noise, its step, its label dropout) does not depend on how many processes share the batch.

    The training sampler (``data.epoch_sampler.EpochShuffleSampler``) gives rank ``r`` of ``W`` the items
    ``r, r + W, r + 2W, ...`` of each global batch of ``W * n`` items. Every rank draws from the same generator state
    for all ``W * n`` rows and keeps rows ``r, r + W, ...``: exactly the draws one process with batch ``W * n`` makes
    for the same items, in the same order, so ``W = 1`` is the single-process draw itself. The price is ``W`` times
    the noise generation per rank (cheap next to a network forward; per-sample generators would avoid it but cost
    one generator per sample and step).
    """

    def __init__(self, world_size: int = 1, rank: int = 0):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got {world_size}, {rank}")
        self.world_size, self.rank = int(world_size), int(rank)

    def _mine(self, draws: Tensor) -> Tensor:
        return draws[self.rank::self.world_size]

    def randint(self, low: int, high: int, n: int, device: torch.device | str = "cpu") -> Tensor:
        """Integers in ``[low, high)`` for this rank's ``n`` rows."""
        return self._mine(torch.randint(low, high, (self.world_size * n,), device=device))

    def rand(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        """Uniform [0, 1) for this rank's ``n`` rows."""
        return self._mine(torch.rand(self.world_size * n, device=device))

    def randn_like(self, x: Tensor) -> Tensor:
        """Standard normal noise shaped like ``x`` (this rank's rows)."""
        return self._mine(torch.randn((self.world_size * x.shape[0], *x.shape[1:]), device=x.device, dtype=x.dtype))
