"""One entry point over the samplers, so that configs name a sampler and its options as plain values."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

from torch import Tensor

from ..guidance.base import SAMPLER_KINDS, GuidanceTerm
from .ddim import ddim_sample
from .ddpm import ddpm_sample
from .denoiser import Denoiser
from .edm_heun import edm_heun_sample
from .noise import PerSampleNoise
from .schedules import VPSchedule

SAMPLERS: dict[str, Callable[..., Tensor]] = {"ddpm": ddpm_sample, "ddim": ddim_sample, "edm": edm_heun_sample}
assert tuple(SAMPLERS) == SAMPLER_KINDS


def sampler_options(sampler: str) -> dict[str, object]:
    """The options (keyword -> paper default) a sampler takes besides ``guidance`` and ``on_step``."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLER_KINDS)}")
    params = inspect.signature(SAMPLERS[sampler]).parameters.values()
    return {p.name: p.default for p in params
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("guidance", "on_step")}


def sample(sampler: str, denoiser: Denoiser, schedule: VPSchedule, labels: Tensor, noise: PerSampleNoise,
           shape: tuple[int, ...], *, guidance: Sequence[GuidanceTerm] = (),
           on_step: Callable[[int, int], None] | None = None, **sampler_kwargs) -> Tensor:
    """Run ``sampler`` ("ddpm", "ddim" or "edm") with its options; see each sampler for what they mean."""
    options = sampler_options(sampler)
    unknown = sorted(set(sampler_kwargs) - set(options))
    if unknown:
        raise ValueError(f"the {sampler} sampler has no option {', '.join(unknown)}; "
                         f"it takes: {', '.join(options)}")
    return SAMPLERS[sampler](denoiser, schedule, labels, noise, shape, guidance=guidance, on_step=on_step,
                             **sampler_kwargs)
