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
