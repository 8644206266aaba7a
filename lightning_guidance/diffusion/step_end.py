"""What every sampler does after a step: refuse a non-finite state (naming the step), then report progress."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def end_of_step(x: Tensor, sampler: str, step: int, num_steps: int,
                on_step: Callable[[int, int], None] | None) -> None:
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"non-finite sample at {sampler} step {step}/{num_steps}; lower the guidance scale "
                                 "or check the model for NaN outputs")
    if on_step is not None:
        on_step(step, num_steps)
