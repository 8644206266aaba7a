"""One guidance setting: everything that steers a sampling run besides the sampler's own options.

``cfg_scale`` is the CFG scale s (``eps = eps_g + s (eps_c - eps_g)``, diffusers' convention: s = 1 is the
conditional model); ``rule`` the CFG rule that combines the two predictions (None: plain CFG,
:mod:`lightning_guidance.diffusion.cfg_rule`); ``weak_model`` the worse model a rule guides away from when that is
not the null class (autoguidance's less-trained network, or the network with its self-attention perturbed); ``terms``
the guidance terms the sampler adds (:mod:`lightning_guidance.diffusion.plug`). A sweep makes one per swept value
(:meth:`lightning_guidance.guidance.sweep.Sweep.at`); the denoiser is built from it
(:func:`lightning_guidance.diffusion.sampling.build_denoiser`). It is checked when built, and nowhere after.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from .cfg_rule import ClassifierFreeGuidance
from .parameterization import check_prediction

if TYPE_CHECKING:
    from .plug import GuidanceTerm


@dataclass(frozen=True)
class WeakModel:
    """A worse version of the model: ``net(x, t, y)`` predicting ``prediction`` (eps / x0 / v)."""

    net: Callable[[Tensor, Tensor, Tensor], Tensor]
    prediction: str = "eps"

    def __post_init__(self):
        check_prediction(self.prediction)


def needs_weak_model(rule: ClassifierFreeGuidance | None) -> bool:
    """Whether ``rule`` reads a weak model: another network (autoguidance) or a perturbed view of this one."""
    return rule is not None and (rule.guide_is_other_model or rule.perturbation is not None)


@dataclass(frozen=True)
class GuidanceSetting:
    cfg_scale: float | Tensor = 1.0
    rule: ClassifierFreeGuidance | None = None
    weak_model: WeakModel | None = None
    terms: tuple[GuidanceTerm, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "terms", tuple(self.terms))
        if isinstance(self.cfg_scale, (int, float)):
            if not math.isfinite(self.cfg_scale):
                raise ValueError(f"the CFG scale must be a finite number, got {self.cfg_scale}")
            object.__setattr__(self, "cfg_scale", float(self.cfg_scale))
        if self.rule is not None and not isinstance(self.rule, ClassifierFreeGuidance):
            raise TypeError(f"a CFG rule must be a ClassifierFreeGuidance (or a variant), got {type(self.rule).__name__}")
        name = type(self.rule).__name__
        if needs_weak_model(self.rule) and self.weak_model is None:
            what = ("its worse model (guide_checkpoint)" if self.rule.guide_is_other_model
                    else "the network with its self-attention perturbed (nets.attention_perturbation)")
            raise ValueError(f"{name} guides away from a weak model: give {what}")
        if self.weak_model is not None and not needs_weak_model(self.rule):
            raise ValueError(f"a weak model was given but {name if self.rule else 'plain CFG'} guides with the "
                             "null class")

    @property
    def cfg_rule(self) -> ClassifierFreeGuidance:
        """The rule that combines the predictions (plain CFG when none was given)."""
        return self.rule if self.rule is not None else ClassifierFreeGuidance()
