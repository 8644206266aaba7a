"""The CFG-rule plug: how a denoiser combines its conditional prediction with a guiding one.

A rule receives ``c`` (the conditional prediction), ``g`` (the guiding prediction: the null class for CFG and its
variants, a worse model for autoguidance), the scale ``s`` in diffusers' convention (``s = 1`` is the conditional
model) and where the sampler is (:class:`RuleContext`: noise level and step), and returns one prediction.
:class:`ClassifierFreeGuidance` is the default, ``g + s (c - g)`` (Ho & Salimans 2021 with ``w = s - 1``); the
variants live in :mod:`lightning_guidance.guidance.cfg_variants`.

**Space.** diffusers' guiders combine the model's raw prediction; the suite's models predict eps (the training
default), so a rule combines eps unless its ``space`` is ``"x0"``. Rules that are affine in ``(c, g)`` with weights
summing to one (CFG, interval, autoguidance) give the same sample in either space; those that take norms, standard
deviations or projections (rescale, APG, CFG-Zero*, tangential, frequency-decoupled) do not.
:func:`combine_predictions` is the one place that converts eps <-> x0.

**Window.** Every rule takes diffusers' ``start``/``stop`` (fractions of the steps: active while
``int(start N) <= step < int(stop N)``) and Kynkäänniemi et al.'s (2024) ``sigma_lo``/``sigma_hi`` (active while
``sigma_lo < sigma <= sigma_hi``, ``sigma = sqrt((1 - abar) / abar)``, the EDM noise level); outside both it returns
``c`` and the sampler skips the guiding forward. ``guidance_rescale`` (phi, Lin et al. 2024, §3.4) is applied after
every rule, as in every diffusers guider.

**State.** A rule with memory (APG's momentum) keeps it in the ``state`` dict that the denoiser owns for one
sampling run (a fresh dict per run, and again whenever the step index goes back to 0 after a later step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .parameterization import eps_to_x0, per_sample, x0_to_eps

RULE_SPACES = ("eps", "x0")


@dataclass(frozen=True)
class SamplingStep:
    """Which step a sampler is at: ``index`` 0 is the first (noisiest) step of ``num_steps``."""

    index: int
    num_steps: int


@dataclass
class RuleContext:
    """What a rule may read besides the two predictions (VP coordinates, one row per sample)."""

    x_t: Tensor
    abar: Tensor  # (B,)
    step: SamplingStep | None
    perturbed: Tensor | None = None  # the perturbed-attention prediction, for the rules that ask for it

    @property
    def sigma(self) -> Tensor:
        """EDM's noise level ``sqrt((1 - abar) / abar)`` (B,), float64."""
        abar = self.abar.to(torch.float64)
        return ((1 - abar) / abar).sqrt()


def rescale_to_conditional_std(pred: Tensor, cond: Tensor, phi: float) -> Tensor:
    """Lin et al. 2024, §3.4 (diffusers' ``rescale_noise_cfg``): ``phi pred std(c)/std(pred) + (1 - phi) pred``,
    std per sample over all non-batch dims (unbiased, as torch's default)."""
    dims = list(range(1, pred.ndim))
    rescaled = pred * (cond.std(dim=dims, keepdim=True) / pred.std(dim=dims, keepdim=True))
    return phi * rescaled + (1 - phi) * pred


class ClassifierFreeGuidance:
    """``g + s (c - g)`` (diffusers' ``ClassifierFreeGuidance``; Ho & Salimans 2021 write ``c + w (c - g)``).

    ``start``/``stop``: fractions of the steps where the rule acts (diffusers); ``sigma_lo``/``sigma_hi``: the noise
    levels where it acts (Kynkäänniemi et al. 2024); ``guidance_rescale``: phi of Lin et al. 2024 (0 = off);
    ``space``: ``"eps"`` (diffusers on an eps model) or ``"x0"``.
    """

    #: which sampler kinds the rule can run on (all, unless a subclass says otherwise)
    supported_samplers: tuple[str, ...] = ("ddpm", "ddim", "edm")
    #: False: the guiding prediction is the model at the null class; True: the same class through another model
    guide_is_other_model: bool = False
    #: "identity" / "skip" / "blur": the rule also reads the conditional prediction with self-attention perturbed
    #: that way (``nets.attention_perturbation``), at the attention blocks ``layers`` (None = all)
    perturbation: str | None = None
    layers: list[int] | None = None

    def __init__(self, start: float = 0.0, stop: float = 1.0, sigma_lo: float = 0.0, sigma_hi: float = math.inf,
                 guidance_rescale: float = 0.0, space: str = "eps"):
        if not 0.0 <= start <= stop <= 1.0:
            raise ValueError(f"{type(self).__name__}: need 0 <= start <= stop <= 1 (fractions of the steps), "
                             f"got start={start}, stop={stop}")
        if not 0.0 <= sigma_lo <= sigma_hi:
            raise ValueError(f"{type(self).__name__}: need 0 <= sigma_lo <= sigma_hi, got {sigma_lo}, {sigma_hi}")
        if not 0.0 <= guidance_rescale <= 1.0:
            raise ValueError(f"{type(self).__name__}: guidance_rescale (phi) must lie in [0, 1], got {guidance_rescale}")
        if space not in RULE_SPACES:
            raise ValueError(f"{type(self).__name__}: space must be one of {RULE_SPACES}, got {space!r}")
        self.start, self.stop = float(start), float(stop)
        self.sigma_lo, self.sigma_hi = float(sigma_lo), float(sigma_hi)
        self.guidance_rescale = float(guidance_rescale)
        self.space = space

    # ---- where the rule acts -------------------------------------------------------------------------
    def _uses_steps(self) -> bool:
        return (self.start, self.stop) != (0.0, 1.0)

    def active(self, ctx: RuleContext) -> Tensor:
        """(B,) bool: where the combination applies (elsewhere the output is ``c``)."""
        sigma = ctx.sigma
        on = (sigma > self.sigma_lo) & (sigma <= self.sigma_hi)
        if self._uses_steps():
            if ctx.step is None:
                raise ValueError(f"{type(self).__name__} with start/stop needs the sampler's step index")
            n = ctx.step.num_steps
            on = on & (int(self.start * n) <= ctx.step.index < int(self.stop * n))
        return on

    def needs_guide(self, s: float | Tensor, ctx: RuleContext) -> bool:
        """Whether the guiding prediction is needed at all at this call (False saves its forward pass)."""
        return bool((torch.as_tensor(s) != 1).any()) and bool(self.active(ctx).any())

    def perturbation_options(self) -> dict:
        """The perturbation's own settings, passed to the perturbed network (e.g. the blur's sigma)."""
        return {}

    def needs_perturbed(self, ctx: RuleContext) -> bool:
        """Whether the perturbed-attention prediction is needed at this call (only rules with a ``perturbation``)."""
        return False

    # ---- the combination -----------------------------------------------------------------------------
    def guide(self, cond: Tensor, guide: Tensor, s: Tensor, ctx: RuleContext, state: dict) -> Tensor:
        """The rule's own combination where it is active; the CFG scale ``s`` is (B, 1, ...). Subclasses override
        this."""
        return guide + s * (cond - guide)

    def __call__(self, cond: Tensor, guide: Tensor | None, s: float | Tensor, ctx: RuleContext,
                 state: dict) -> Tensor:
        """The combined prediction in this rule's space (``guide`` None: nothing is active, ``c`` is returned)."""
        if guide is None:
            pred = cond
        else:
            s = per_sample(s, cond)
            # like every diffusers guider, s = 1 is the plain conditional model (whatever the rule would give)
            on = per_sample(self.active(ctx), cond).to(torch.bool) & (s != 1)
            pred = torch.where(on, self.guide(cond, guide, s, ctx, state), cond)
        if self.guidance_rescale > 0:
            pred = rescale_to_conditional_std(pred, cond, self.guidance_rescale)
        return pred

    def check_data_shape(self, data_shape: tuple[int, ...]) -> None:
        """Raise a clear error if the rule cannot act on samples of this shape (any shape, but the rescale needs a
        standard deviation over at least two values per sample)."""
        if self.guidance_rescale > 0 and math.prod(data_shape) < 2:
            raise ValueError(f"{type(self).__name__}: guidance_rescale rescales to a sample's standard deviation, and "
                             f"samples of shape {tuple(data_shape)} hold one value: use another rule for this data")

    def settings(self) -> dict:
        """Plain values that identify the rule (config hash, reports)."""
        simple = (int, float, str, bool, type(None), tuple, list)
        return {"class": type(self).__name__,
                **{k: v for k, v in sorted(vars(self).items()) if isinstance(v, simple) and not k.startswith("_")}}


def combine_predictions(rule: ClassifierFreeGuidance, eps_cond: Tensor, eps_guide: Tensor | None,
                        s: float | Tensor, ctx: RuleContext, state: dict) -> Tensor:
    """Apply ``rule`` to two eps predictions and return eps: the one place where a rule's space is converted.

    ``space = "x0"``: ``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)`` for both (unclipped), combine, convert back.
    """
    if rule.space == "eps":
        return rule(eps_cond, eps_guide, s, ctx, state)
    to_x0 = lambda e: None if e is None else eps_to_x0(e, ctx.x_t, ctx.abar)  # noqa: E731
    x0_ctx = RuleContext(x_t=ctx.x_t, abar=ctx.abar, step=ctx.step, perturbed=to_x0(ctx.perturbed))
    x0 = rule(to_x0(eps_cond), to_x0(eps_guide), s, x0_ctx, state)
    return x0_to_eps(x0, ctx.x_t, ctx.abar)
