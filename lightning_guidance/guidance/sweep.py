"""The sweep: one guidance setting per swept value, known in one place and free of Lightning.

A sweep has a ``target``, ``values`` and optionally a ``cfg_rule`` (a CFG variant of
:mod:`lightning_guidance.guidance.cfg_variants` replacing plain CFG's combination at every value). ``target: cfg``
makes each swept value v the CFG scale s of the denoiser (``eps = eps_u + s (eps_c - eps_u)``, diffusers'
convention) with the guidance terms as configured; ``target: guidance`` keeps the CFG scale fixed at ``cfg_scale``
and multiplies every term's own ``scale`` by v (0 is the unguided baseline with the same seeds).
:meth:`Sweep.at` turns one swept value into a :class:`~lightning_guidance.diffusion.guidance_setting.GuidanceSetting`.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field

from torch import nn

from ..diffusion.cfg_rule import ClassifierFreeGuidance
from ..diffusion.guidance_setting import GuidanceSetting, WeakModel
from ..diffusion.plug import GuidanceTerm
from ..io.digests import file_identity
from .cfg_plus_classifier import CFGPlusClassifierGuidance
from .log_likelihood import num_classes_of

SWEEP_TARGETS = ("cfg", "guidance")
#: the swept value's name in tables and on figure axes, per target (the glossary of docs/architecture.md)
SWEEP_AXES = {"cfg": "CFG scale s", "guidance": "swept value v (x each term's scale)"}


@dataclass
class Sweep:
    target: str = "cfg"
    values: list[float] = field(default_factory=lambda: [1.0])
    cfg_scale: float = 1.0
    terms: list[GuidanceTerm] = field(default_factory=list)
    cfg_rule: ClassifierFreeGuidance | None = None

    def __post_init__(self):
        if self.target not in SWEEP_TARGETS:
            raise ValueError(f"the sweep's target must be one of {SWEEP_TARGETS}, got {self.target!r}")
        if not self.values:
            raise ValueError("the sweep must list at least one value")
        self.values = [float(v) for v in self.values]
        self.cfg_scale = float(self.cfg_scale)
        negative = [s for s in self.cfg_scales if s < 0]
        if negative:  # s = 0 is the unconditional model, 1 the conditional; no method here defines s < 0
            raise ValueError(f"CFG scale {negative[0]:g} < 0 refused: s = 0 is the unconditional model, s = 1 the "
                             "conditional, s > 1 guides toward the class; no method here defines a negative scale")
        self.terms = list(self.terms)

    def at(self, value: float, weak_model: WeakModel | None = None) -> GuidanceSetting:
        """The guidance setting at one swept value; ``weak_model``: what the CFG rule guides away from, if it reads
        one (``CFGDiffusion.weak_model``)."""
        s = value if self.target == "cfg" else self.cfg_scale
        return GuidanceSetting(s, self.cfg_rule, weak_model, self._terms_at(value))

    def _terms_at(self, value: float) -> tuple[GuidanceTerm, ...]:
        if self.target == "cfg":
            return tuple(self.terms)
        terms = [copy.copy(t) for t in self.terms]  # shallow: classifiers shared, only `scale` differs
        for t in terms:
            t.scale = t.scale * value
        return tuple(terms)

    @property
    def cfg_scales(self) -> list[float]:
        """Every CFG scale the sweep uses."""
        return list(self.values) if self.target == "cfg" else [self.cfg_scale]

    @property
    def axis(self) -> str:
        """The name of the swept value in tables and on figure axes (docs/architecture.md, glossary)."""
        return SWEEP_AXES[self.target]

    def folder(self, value: float) -> str:
        """The name of one value's folder of shards (``cfg_2``, ``guidance_0.5``)."""
        return f"{self.target}_{value:g}"

    def describe(self, value: float) -> str:
        """One line for reports: the CFG scale s and each term with its scale at this value."""
        s = value if self.target == "cfg" else self.cfg_scale
        rule = type(self.cfg_rule).__name__ if self.cfg_rule is not None else "CFG"
        return ", ".join([f"{rule} s = {s:g}"] + [f"{type(t).__name__} (scale {t.scale:g})"
                                                  for t in self._terms_at(value)])

    def identity(self, value: float) -> dict:
        """What a shard's config hash records of the sweep at one value: the target and the swept value, the terms
        and the rule as configured (the rule's weak model by its file), and the fixed CFG scale of a guidance sweep
        (in a CFG sweep the swept value is the CFG scale)."""
        out = {"target": self.target, "value": float(value), "guidance": [describe_term(t) for t in self.terms]}
        if self.target == "guidance":
            out["cfg_scale"] = self.cfg_scale
        if self.cfg_rule is not None:
            out["cfg_rule"] = describe_rule(self.cfg_rule)
        return out

    @property
    def couples_batch(self) -> bool:
        return any(t.couples_batch for t in self.terms)

    @property
    def classifiers(self) -> list[nn.Module]:
        """The distinct classifier networks of the terms (each once)."""
        found = {id(t.classifier): t.classifier for t in self.terms if isinstance(getattr(t, "classifier", None), nn.Module)}
        return list(found.values())

    def check_against(self, num_classes: int, data_shape: tuple[int, ...], schedule: str,
                      num_train_steps: int) -> None:
        """Refuse, before any sampling, a guide that cannot work with a diffusion model of these settings."""
        rule = self.cfg_rule
        if rule is not None:
            rule.check_data_shape(tuple(data_shape))
            if type(rule) is not ClassifierFreeGuidance and any(isinstance(t, CFGPlusClassifierGuidance)
                                                                for t in self.terms):
                raise ValueError(f"CFGPlusClassifierGuidance rescales to the plain CFG difference; it cannot be "
                                 f"combined with cfg_rule {type(rule).__name__}: drop one of them")
        for term in self.terms:
            name = type(term).__name__
            if isinstance(term, CFGPlusClassifierGuidance) and any(s == 1 for s in self.cfg_scales):
                raise ValueError(f"{name} rescales the classifier gradient to the CFG difference, which is 0 at CFG "
                                 "scale 1: every CFG scale used must differ from 1")
            clf = getattr(term, "classifier", None)
            if not isinstance(clf, nn.Module):
                continue
            k = num_classes_of(clf)
            if k != num_classes:
                raise ValueError(f"{name}: the classifier has {k} classes but the diffusion model has "
                                 f"{num_classes}; use one trained on the same labels (off-the-shelf: class_map)")
            shape = tuple(getattr(clf, "data_shape", ()) or ())
            if shape and shape != tuple(data_shape):
                raise ValueError(f"{name}: the classifier was built for inputs {shape}, the samples are "
                                 f"{tuple(data_shape)}")
            if getattr(term, "input", None) == "x_t" and hasattr(clf, "noisy"):
                if not clf.noisy:
                    raise ValueError(f"{name} reads the noisy x_t but {clf.checkpoint} is a clean classifier; use a "
                                     "noisy one or input: x0_hat")
                if (clf.schedule_name, clf.num_train_steps) != (schedule, num_train_steps):
                    raise ValueError(f"{name}: the classifier was trained on a {clf.schedule_name} schedule of "
                                     f"{clf.num_train_steps} steps, the diffusion model on {schedule}/"
                                     f"{num_train_steps}: its t means another noise level; retrain it to match")


def describe_classifier(classifier: nn.Module) -> dict:
    """What identifies a guide: its weights file (suite checkpoint or timm/torchvision file) and its settings."""
    out = {"class": type(classifier).__name__, "settings": classifier.extra_repr()}
    out.update(file_identity(getattr(classifier, "checkpoint", None) or getattr(classifier, "weights_path", None)))
    index = getattr(classifier, "class_index", None)
    if index is not None:
        out["class_index"] = index.tolist()
    return out


def describe_network(net: nn.Module) -> dict:
    """A network given as an object (its weights come from elsewhere): its class and the digest of its printed
    structure (layers and their settings)."""
    structure = hashlib.sha256(repr(net).encode()).hexdigest()[:16]
    return {"class": f"{type(net).__module__}.{type(net).__qualname__}", "structure_sha256": structure}


def describe_rule(rule: ClassifierFreeGuidance) -> dict:
    """A CFG rule's settings for the config hash and report; autoguidance's worse model by its file."""
    out = rule.settings()
    if rule.guide_is_other_model:
        out["guide"] = file_identity(rule.guide_checkpoint)
    return out


def describe_term(term: GuidanceTerm) -> dict:
    """The settings of a guidance term (plain values, its classifier and schedule), for the config hash and report."""
    simple = (int, float, str, bool, type(None))
    out = {"class": type(term).__name__,
           **{k: v for k, v in sorted(vars(term).items()) if isinstance(v, simple) and not k.startswith("_")}}
    if isinstance(getattr(term, "classifier", None), nn.Module):
        out["classifier"] = describe_classifier(term.classifier)
    schedule = getattr(term, "schedule", None)
    if schedule is not None:
        out["schedule"] = {"class": type(schedule).__name__,
                           **{k: v for k, v in vars(schedule).items() if isinstance(v, simple)}}
    return out
