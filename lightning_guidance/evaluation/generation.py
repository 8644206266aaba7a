"""Generate the samples of a block of sample ids: labels and seeds follow the id, so a sample does not depend on the
batch it was drawn in nor on the number of processes (each rank draws its own block, see :mod:`.rank_split`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..diffusion.noise import PerSampleNoise
from ..diffusion.sampling import sample
from ..guidance.base import GuidanceTerm


def labels_for_ids(ids: Sequence[int] | Tensor, classes: Sequence[int]) -> Tensor:
    """Class of sample ``i``: ``classes[i % len(classes)]`` (the rule SamplingModule's shards use)."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    return torch.as_tensor(list(classes), dtype=torch.long)[ids % len(classes)]


@torch.no_grad()
def generate_for_ids(diffusion, ids: Sequence[int] | Tensor, classes: Sequence[int], seed: int = 0,
                     sampler: str = "ddim", sampler_kwargs: dict | None = None, cfg_scale: float = 1.0,
                     guidance: Sequence[GuidanceTerm] = (), batch_size: int = 64,
                     on_batch: Callable[[Tensor, Tensor], None] | None = None) -> tuple[Tensor, Tensor] | None:
    """Samples of ``diffusion`` (a CFGDiffusion) for sample ids ``ids``: label from :func:`labels_for_ids`, noise from
    seed ``seed + id``. Returns ``(samples, labels)``, or, with ``on_batch(samples, labels)``, hands each batch
    over as it is drawn and returns None (so that large evaluations need not hold every sample)."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    labels = labels_for_ids(ids, classes)
    out, out_labels = [], []
    for lo in range(0, len(ids), batch_size):
        sl = slice(lo, lo + batch_size)
        noise = PerSampleNoise(seed + ids[sl], device=diffusion.device)
        y = labels[sl].to(diffusion.device)
        x = sample(sampler, diffusion.denoiser(cfg_scale), diffusion.schedule, y, noise, diffusion.data_shape,
                   guidance=list(guidance), **(sampler_kwargs or {}))
        if on_batch is not None:
            on_batch(x, y)
        else:
            out.append(x)
            out_labels.append(y)
    if on_batch is not None:
        return None
    return torch.cat(out), torch.cat(out_labels)
