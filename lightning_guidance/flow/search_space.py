"""The space nearest neighbours are searched in: flattened pixels (or points), or a network's flattened features.

One place knows both how a batch becomes search rows and how the space is named in cache keys and shard hashes
(by the network's class and a content digest of its weights), so the flow and the nearest-neighbour controls agree.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from .cache import array_digest


def module_digest(module: nn.Module) -> str:
    """Content digest of a network's weights (sorted state_dict)."""
    state = module.state_dict()
    return array_digest(*(state[k] for k in sorted(state))) + f":{len(state)}"


class SearchSpace:
    """Rows to search in: ``x.flatten(1)``, or ``net(x).flatten(1)`` in batches of ``batch_size`` on ``device``.
    The network is held in a plain list, so that it never becomes a submodule (a checkpoint or EMA copy)."""

    def __init__(self, net: nn.Module | None = None, batch_size: int = 512):
        if batch_size < 1:
            raise ValueError(f"feature_batch_size must be >= 1, got {batch_size}")
        self._net, self.batch_size = [net], int(batch_size)

    @property
    def net(self) -> nn.Module | None:
        return self._net[0]

    @torch.no_grad()
    def rows(self, x: Tensor, device: torch.device | str = "cpu") -> np.ndarray:
        if self.net is None:
            return x.flatten(1).float().cpu().numpy()
        self.net.to(device).eval()
        bs = self.batch_size
        return torch.cat([self.net(x[i:i + bs].to(device)).flatten(1).float().cpu()
                          for i in range(0, len(x), bs)]).numpy()

    def describe(self) -> str | dict:
        """``"pixels"``, or the network's class and weights digest: what a cache key or shard hash names."""
        if self.net is None:
            return "pixels"
        return {"class": f"{type(self.net).__module__}.{type(self.net).__qualname__}",
                "weights": module_digest(self.net)}
