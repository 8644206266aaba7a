"""A diffusers model folder's noise schedule (``scheduler/scheduler_config.json``) mapped onto the suite's VP schedule.

What the config says about the *model* is mapped: its ``alphas_cumprod`` (computed by diffusers' own scheduler class
from ``beta_schedule``, ``beta_start``/``beta_end``, ``trained_betas``, ``num_train_timesteps``), its
``prediction_type`` (``epsilon`` -> eps, ``sample`` -> x0, ``v_prediction`` -> v), ``clip_sample`` (the denoiser's
``clip_x0``) and the step grid of ``timestep_spacing`` / ``steps_offset`` (:class:`SpacedVPSchedule`, which DDPM and
DDIM walk). What cannot be mapped is refused in one line: a scheduler that is not a discrete beta schedule, an
unknown prediction type or spacing, dynamic thresholding, a clip range other than 1, a schedule whose last
``abar`` is 0 (zero terminal SNR).

A ``DDPMScheduler``'s ``variance_type`` is the DDPM sampler's default ``variance`` (:func:`ddpm_variance`):
``fixed_small`` -> ``small`` (the posterior ``beta~_t``), ``fixed_large`` -> ``large`` (``beta_t``, DDPM CIFAR-10's);
an explicit ``sampler_kwargs: {variance: ...}`` wins. Another ``variance_type`` is refused in one line, except
``learned`` / ``learned_range`` on a network whose variance channels are dropped as ``DiTPipeline`` drops them
(``2C`` output channels): the suite's samplers read no variance from a network, so DDIM samples such a model as
``DiTPipeline`` does, and DDPM takes the small variance unless told otherwise (the learned one lies between small
and large); refusing would also refuse DDIM and EDM, which need no variance. Other schedulers' ``variance_type``
(DPM-Solver's ``learned_range``) only says that such channels exist.

Otherwise the sampler's choices are the suite's own: DDPM and DDIM end at ``abar = 1`` (diffusers'
``set_alpha_to_one=True``); DDPM adds no noise at its last step whatever the grid (diffusers' ``fixed_large`` adds
``beta`` noise at a last step ``t > 0``, e.g. with ``steps_offset = 1``); diffusers' DDIM steps from ``t`` to
``t - T // n``, which is the previous grid point for ``leading`` spacing and for ``trailing`` when ``n`` divides
``T``, while the suite's DDIM always steps to the previous grid point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .schedules import VPSchedule

DIFFUSERS_INSTALL = "pip install -e '.[diffusers]'"
SPACINGS = ("linspace", "leading", "trailing")
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
#: a ``DDPMScheduler``'s ``variance_type`` -> the suite's DDPM ``variance`` (Ho et al. 2020, §3.2)
DDPM_VARIANCE_TYPES = {"fixed_small": "small", "fixed_large": "large"}
#: variance types that read a variance from the network's extra output channels
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")
#: diffusers schedulers defined by betas over discrete training steps (the ones whose schedule the suite can map)
BETA_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
                   "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "DPMSolverMultistepScheduler",
                   "DPMSolverSinglestepScheduler", "DPMSolverSDEScheduler", "KDPM2DiscreteScheduler",
                   "KDPM2AncestralDiscreteScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler")


def import_diffusers():
    """The ``diffusers`` package, or one line saying how to install it."""
    try:
        import diffusers
    except ImportError:
        raise ImportError(f"diffusers is not installed; models in the diffusers format need it: "
                          f"{DIFFUSERS_INSTALL}") from None
    return diffusers


def model_folder(path: str | Path, *parts: str) -> Path:
    """``path/parts...`` that must exist on disk (one line naming it otherwise; nothing is ever downloaded)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"model folder not found: {root} (a folder written by diffusers' save_pretrained; "
                                "models are read from local disk only, see models/README.md)")
    target = root.joinpath(*parts)
    if not target.exists():
        raise FileNotFoundError(f"{target} not found: {root} is not a complete save_pretrained folder "
                                "(see models/README.md for the layout)")
    return target


def diffusers_timesteps(spacing: str, num_train_steps: int, num_steps: int, steps_offset: int = 0) -> np.ndarray:
    """The descending training steps diffusers' DDPM/DDIM ``set_timesteps(num_steps)`` visits (diffusers 0.42:
    ``linspace``: ``round(linspace(0, T-1, n))``; ``leading``: ``i * (T // n) + offset``; ``trailing``:
    ``round(arange(T, 0, -T/n)) - 1``)."""
    T, n = num_train_steps, num_steps
    if spacing == "linspace":
        return np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    if spacing == "leading":
        return (np.arange(0, n) * (T // n)).round()[::-1].astype(np.int64) + steps_offset
    if spacing == "trailing":
        return np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    raise ValueError(f"unknown timestep_spacing {spacing!r}; the suite maps {', '.join(SPACINGS)}")


class SpacedVPSchedule(VPSchedule):
    """A VP schedule whose respaced step grid is diffusers' ``timestep_spacing`` (with ``steps_offset``)."""

    def __init__(self, betas: torch.Tensor, spacing: str = "linspace", steps_offset: int = 0):
        super().__init__(betas)
        if spacing not in SPACINGS:
            raise ValueError(f"unknown timestep_spacing {spacing!r}; the suite maps {', '.join(SPACINGS)}")
        self.spacing, self.steps_offset = spacing, int(steps_offset)

    def respaced_indices(self, num_steps: int) -> torch.Tensor:
        T = self.num_train_steps
        if not 1 <= num_steps <= T:
            raise ValueError(f"num_steps must be in [1, {T}], got {num_steps}")
        steps = diffusers_timesteps(self.spacing, T, num_steps, self.steps_offset)
        if steps.max() > T - 1 or steps.min() < 0 or len(np.unique(steps)) != num_steps:
            raise ValueError(f"{num_steps} steps with timestep_spacing {self.spacing!r} and steps_offset "
                             f"{self.steps_offset} leave the {T} training steps or repeat one; use fewer steps")
        return torch.from_numpy(steps.copy())

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: torch.Tensor, **kwargs) -> "SpacedVPSchedule":
        """The schedule whose (float64) ``alphas_cumprod`` are the given ones: ``beta_i = 1 - abar_i / abar_{i-1}``."""
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        return cls(1 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]]), **kwargs)


@dataclass(frozen=True)
class PretrainedSchedule:
    """What a model folder's scheduler config says: the schedule, the prediction kind, whether x0 is clipped."""

    schedule: SpacedVPSchedule
    name: str  # "linear" / "cosine" when equal to the suite's schedule of that name, else "diffusers-<beta_schedule>"
    prediction: str  # "eps", "x0" or "v"
    clip_x0: bool
    scheduler_class: str
    variance_type: str | None = None  # a DDPMScheduler's (the DDPM sampler's variance); None for other schedulers


def ddpm_variance(config_path: str | Path, variance_type: str | None, drops_learned_variance: bool) -> str:
    """The DDPM sampler's default ``variance`` for a ``DDPMScheduler``'s ``variance_type`` (None: another scheduler):
    see the module docstring; one line naming the two it maps for the rest."""
    if variance_type is None or (variance_type in LEARNED_VARIANCE_TYPES and drops_learned_variance):
        return "small"
    if variance_type not in DDPM_VARIANCE_TYPES:
        raise ValueError(f"{config_path}: variance_type {variance_type!r} has no counterpart in the suite's DDPM "
                         f"sampler, which maps {' and '.join(DDPM_VARIANCE_TYPES)} (variance small and large)")
    return DDPM_VARIANCE_TYPES[variance_type]


def schedule_name(schedule: VPSchedule, beta_schedule: str) -> str:
    """The suite's name for a schedule equal to its linear or cosine one (so that a noisy classifier trained by the
    suite on that schedule is accepted as a guide), else ``diffusers-<beta_schedule>``."""
    T = schedule.num_train_steps
    for name in ("linear", "cosine"):
        if torch.allclose(schedule.alphas_cumprod, VPSchedule.from_name(name, T).alphas_cumprod, rtol=1e-5, atol=1e-7):
            return name
    return f"diffusers-{beta_schedule}"


def read_scheduler_config(folder: str | Path) -> PretrainedSchedule:
    """Map ``<folder>/scheduler/scheduler_config.json`` (see the module docstring); one-line errors for the rest."""
    diffusers = import_diffusers()
    path = model_folder(folder, "scheduler", "scheduler_config.json")
    config = diffusers.DDPMScheduler.load_config(str(path.parent), local_files_only=True)
    kind = config.get("_class_name")
    if kind not in BETA_SCHEDULERS:
        raise ValueError(f"{path}: scheduler {kind!r} is not a discrete beta schedule the suite can map onto its VP "
                         f"schedule (it maps {', '.join(BETA_SCHEDULERS)})")
    scheduler = getattr(diffusers, kind).from_config(config)
    settings = scheduler.config
    prediction = settings.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"{path}: unknown prediction_type {prediction!r}; the suite maps "
                         f"{', '.join(PREDICTION_TYPES)}")
    spacing = settings.get("timestep_spacing", "leading")
    if spacing not in SPACINGS:
        raise ValueError(f"{path}: unknown timestep_spacing {spacing!r}; the suite maps {', '.join(SPACINGS)}")
    if settings.get("thresholding", False):
        raise ValueError(f"{path}: dynamic thresholding (thresholding: true) has no counterpart in the suite's "
                         "samplers, which clip x0 to [-1, 1] or not at all")
    clip = bool(settings.get("clip_sample", False))
    if clip and float(settings.get("clip_sample_range", 1.0)) != 1.0:
        raise ValueError(f"{path}: clip_sample_range {settings['clip_sample_range']} is not 1: the suite clips x0 "
                         "to [-1, 1]")
    abar = scheduler.alphas_cumprod.to(torch.float64)
    if not bool((abar > 0).all() and (abar[1:] < abar[:-1]).all()):
        raise ValueError(f"{path}: the schedule's abar does not decrease to a value above 0 (zero terminal SNR?); "
                         "the suite's VP samplers need 1 > abar_1 > ... > abar_T > 0")
    schedule = SpacedVPSchedule.from_alphas_cumprod(abar, spacing=spacing, steps_offset=settings.get("steps_offset", 0))
    return PretrainedSchedule(schedule, schedule_name(schedule, str(settings.get("beta_schedule"))),
                              PREDICTION_TYPES[prediction], clip, kind,
                              settings.get("variance_type", "fixed_small") if kind == "DDPMScheduler" else None)
