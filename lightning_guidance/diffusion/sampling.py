"""One entry point over the samplers, and the one loop that samples a block of sample ids.

Configs name a sampler and its options as plain values (``sampler: ddim``, ``sampler_kwargs: {num_steps: 50}``);
:func:`check_sampling` checks them, with the guidance terms, when a module or callback is built, so a bad option
fails before any work. :func:`sample_ids` is the only place where sample ids become labels, seeds and batches:
the SamplingModule, the evaluation callbacks and ``CFGDiffusion.generate`` all draw through it, each batch through
the denoiser :func:`build_denoiser` makes of the model and one guidance setting.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor

from .ddim import ddim_sample
from .ddpm import check_ddpm_variance, ddpm_sample
from .denoiser import Denoiser, NetDenoiser, check_labels
from .edm_heun import edm_heun_sample
from .guidance_setting import GuidanceSetting
from .noise import PerSampleNoise
from .plug import SAMPLER_KINDS, GuidanceTerm, check_guidance_for_sampler
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


def check_sampling(sampler: str, sampler_kwargs: dict | None = None, guidance: Sequence[GuidanceTerm] = ()) -> dict:
    """Refuse, before any work, an unknown sampler, an option it does not take, a bad ``num_steps`` / ``eta`` / DDPM
    ``variance``, or a guidance term that cannot run on it. Returns the options as a plain dict."""
    options = sampler_options(sampler)
    kwargs = dict(sampler_kwargs or {})
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ValueError(f"the {sampler} sampler has no option {', '.join(unknown)}; it takes: {', '.join(options)}")
    steps = kwargs.get("num_steps")
    if "num_steps" in kwargs and not (steps is None and sampler == "ddpm"):
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise ValueError(f"sampler_kwargs num_steps must be an integer >= 1 for the {sampler} sampler, "
                             f"got {steps!r}")
    for name, value in kwargs.items():
        default = options[name]
        if isinstance(default, float) and value is not None and not isinstance(value, numbers.Real):
            raise ValueError(f"sampler_kwargs {name} must be a number for the {sampler} sampler, got {value!r}")
    if float(kwargs.get("eta", 0.0)) < 0:
        raise ValueError(f"sampler_kwargs eta must be >= 0, got {kwargs['eta']}")
    if sampler == "ddpm" and "variance" in kwargs:
        check_ddpm_variance(kwargs["variance"])
    check_guidance_for_sampler(guidance, sampler)
    return kwargs


def sample(sampler: str, denoiser: Denoiser, schedule: VPSchedule, labels: Tensor, noise: PerSampleNoise,
           shape: tuple[int, ...], *, guidance: Sequence[GuidanceTerm] = (),
           on_step: Callable[[int, int], None] | None = None, **sampler_kwargs) -> Tensor:
    """Run ``sampler`` ("ddpm", "ddim" or "edm") with its options; see each sampler for what they mean."""
    check_sampling(sampler, sampler_kwargs)  # the terms are checked by the sampler itself, before its first step
    return SAMPLERS[sampler](denoiser, schedule, labels, noise, shape, guidance=guidance, on_step=on_step,
                             **sampler_kwargs)


def model_sampler_kwargs(model, sampler: str, sampler_kwargs: dict | None = None) -> dict:
    """The options ``model`` is sampled with by ``sampler``: the model's own defaults (``model.sampler_defaults``, e.g.
    a diffusers folder's DDPM variance), overridden by the options given."""
    return {**getattr(model, "sampler_defaults", {}).get(sampler, {}), **(sampler_kwargs or {})}


class DiffusionModel(Protocol):
    """What :func:`sample_ids` needs of a trained diffusion model (``CFGDiffusion`` is one): a class-conditional
    ``net(x, t, y)`` predicting ``prediction``, its schedule, and whether x0_hat is clipped to [-1, 1]. It may have
    ``sampler_defaults`` (sampler -> options), which the options given override (:func:`model_sampler_kwargs`)."""

    net: Callable[[Tensor, Tensor, Tensor], Tensor]
    num_classes: int
    prediction: str
    clip_x0: bool
    schedule: VPSchedule
    data_shape: tuple[int, ...]
    device: torch.device


def build_denoiser(model: DiffusionModel, setting: GuidanceSetting | None = None) -> NetDenoiser:
    """The sampler's denoiser: ``model``'s network under one guidance ``setting`` (default: the conditional model)."""
    return NetDenoiser(model.net, model.num_classes, model.prediction, setting, clip_x0=model.clip_x0)


def labels_for_ids(ids: Sequence[int] | Tensor, classes: Sequence[int]) -> Tensor:
    """Class of sample ``i``: ``classes[i % len(classes)]``."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    return torch.as_tensor(list(classes), dtype=torch.long)[ids % len(classes)]


def seeds_for_ids(ids: Sequence[int] | Tensor, seed: int) -> Tensor:
    """Seed of sample ``i``: ``seed + i``."""
    return seed + torch.as_tensor(ids, dtype=torch.long)


@torch.no_grad()
def sample_batches(model: DiffusionModel, labels: Tensor, seeds: Sequence[int] | Tensor, *, sampler: str = "ddim",
                   sampler_kwargs: dict | None = None, setting: GuidanceSetting | None = None,
                   batch_size: int | None = None,
                   on_batch: Callable[[Tensor, Tensor], None] | None = None) -> tuple[Tensor, Tensor] | None:
    """Samples of ``model`` under guidance ``setting`` for ``labels`` with one seed each, ``batch_size`` at a time
    (None: one batch).

    A sample depends on its seed and label only, never on its batch (unless a term couples the batch). Returns
    ``(samples, labels)``, or, with ``on_batch(samples, labels)``, hands each batch over as it is drawn and returns
    None (so that large evaluations need not hold every sample)."""
    setting = setting if setting is not None else GuidanceSetting()
    # the terms: by the sampler, before its first step
    sampler_kwargs = model_sampler_kwargs(model, sampler, check_sampling(sampler, sampler_kwargs))
    seeds = torch.as_tensor(seeds, dtype=torch.long).cpu()
    labels = labels.to(model.device)
    check_labels(labels, model.num_classes)
    step = batch_size or max(len(labels), 1)
    out = []
    for lo in range(0, len(labels), step):
        sl = slice(lo, lo + step)
        noise = PerSampleNoise(seeds[sl], device=model.device)
        x = SAMPLERS[sampler](build_denoiser(model, setting), model.schedule, labels[sl], noise, model.data_shape,
                              guidance=list(setting.terms), **sampler_kwargs)
        if on_batch is not None:
            on_batch(x, labels[sl])
        else:
            out.append(x)
    if on_batch is not None:
        return None
    return torch.cat(out), labels


def sample_ids(model: DiffusionModel, ids: Sequence[int] | Tensor, classes: Sequence[int], seed: int = 0,
               **kwargs) -> tuple[Tensor, Tensor] | None:
    """Samples for sample ids ``ids``: label ``classes[id % len(classes)]``, noise from seed ``seed + id`` (the same
    id gets the same sample at every guidance value and on any number of processes); ``kwargs`` as
    :func:`sample_batches`."""
    return sample_batches(model, labels_for_ids(ids, classes), seeds_for_ids(ids, seed), **kwargs)
