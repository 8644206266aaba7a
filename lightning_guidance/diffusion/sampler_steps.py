"""What every sampler does before its first step and after each step, written once for DDPM, DDIM and EDM."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .noise import PerSampleNoise
from .plug import GuidanceTerm, check_guidance_for_sampler


def begin_sampling(sampler: str, labels: Tensor, noise: PerSampleNoise, guidance: Sequence[GuidanceTerm],
                   dtype: torch.dtype, device: torch.device) -> Callable[[float], Tensor]:
    """Check one seed per label and that every term runs on ``sampler``; return ``batch(value) -> (B,)`` tensor."""
    if len(labels) != len(noise):
        raise ValueError(f"{len(labels)} labels but {len(noise)} seeds: give one seed per sample")
    check_guidance_for_sampler(guidance, sampler)
    return lambda value: torch.full((len(labels),), float(value), dtype=dtype, device=device)


def end_of_step(x: Tensor, sampler: str, step: int, num_steps: int,
                on_step: Callable[[int, int], None] | None) -> None:
    """Refuse a non-finite state (naming the step), then report progress."""
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"non-finite sample at {sampler} step {step}/{num_steps}; lower the guidance scale "
                                 "or check the model for NaN outputs")
    if on_step is not None:
        on_step(step, num_steps)
