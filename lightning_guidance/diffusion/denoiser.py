"""The noise predictor a sampler calls, including classifier-free guidance as one batched forward.

A *denoiser* here is any callable ``(x_t, t, abar, y, step=None) -> DenoiserOutput`` in VP coordinates:
``x_t`` the state, ``t`` the continuous model time (B,), ``abar`` (B,), ``y`` class ids (B,) and ``step`` the
sampler's :class:`~lightning_guidance.diffusion.cfg_rule.SamplingStep` (None outside a sampler).
Samplers (DDPM, DDIM, EDM) only ever see this interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from .cfg_rule import RuleContext, SamplingStep, combine_predictions
from .guidance_setting import GuidanceSetting
from .parameterization import check_prediction, eps_to_x0, prediction_to_eps


@dataclass
class DenoiserOutput:
    """``eps`` is what the sampler uses; ``eps_cond``/``eps_uncond`` are kept when CFG produced it (``eps_uncond``
    is the null-class prediction; autoguidance's worse model is not an unconditional model and is not kept)."""

    eps: Tensor
    x0: Tensor
    eps_cond: Tensor | None = None
    eps_uncond: Tensor | None = None


class Denoiser(Protocol):
    num_classes: int

    def __call__(self, x_t: Tensor, t: Tensor, abar: Tensor, y: Tensor,
                 step: SamplingStep | None = None) -> DenoiserOutput: ...


def check_labels(y: Tensor, num_classes: int, allow_null: bool = False) -> None:
    """Raise a clear error for class ids outside ``[0, num_classes)`` (the null id ``num_classes`` if allowed)."""
    top = num_classes + (1 if allow_null else 0)
    if y.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"class labels must be an integer tensor, got {y.dtype}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= top):
        bad = y[(y < 0) | (y >= top)].unique().tolist()
        raise ValueError(f"class ids {bad} out of range: this model knows classes 0..{num_classes - 1}")


def same_architecture(a: nn.Module, b: nn.Module) -> bool:
    """True when two networks have the same class and the same parameter and buffer names and shapes."""
    shapes = lambda m: ({k: tuple(v.shape) for k, v in m.named_parameters()},  # noqa: E731
                        {k: tuple(v.shape) for k, v in m.named_buffers()})
    return type(a) is type(b) and shapes(a) == shapes(b)


class StackedPair:
    """Two networks of one architecture evaluated on the same ``(x, t, y)`` as **one** call: their weights are
    stacked (``torch.func.stack_module_state``) and the forward is vmapped over the stack, the inputs shared.
    Returns ``(net_a(x, t, y), net_b(x, t, y))``."""

    def __init__(self, net_a: nn.Module, net_b: nn.Module):
        if not same_architecture(net_a, net_b):
            raise ValueError(f"{type(net_a).__name__} and {type(net_b).__name__} differ in architecture; "
                             "they cannot be stacked into one forward")
        import copy

        from torch.func import functional_call, stack_module_state, vmap

        self.params, self.buffers = stack_module_state([net_a, net_b])
        skeleton = copy.deepcopy(net_a).to("meta")
        call = lambda p, b, x, t, y: functional_call(skeleton, (p, b), (x, t, y))  # noqa: E731
        self._forward = vmap(call, in_dims=(0, 0, None, None, None))

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        out = self._forward(self.params, self.buffers, x, t, y)
        return out[0], out[1]


class NetDenoiser:
    """Wraps a class-conditional network ``net(x, t, y)`` (null class id = ``num_classes``) under one
    :class:`~lightning_guidance.diffusion.guidance_setting.GuidanceSetting`.

    The setting's CFG scale s (diffusers' convention): ``eps = eps_u + s (eps_c - eps_u)``; s = 1 is the plain
    conditional model, s = 0 the unconditional one (Ho & Salimans 2021 write w = s - 1). When CFG is
    active the conditional and null halves go through the network as **one** doubled batch.
    s may be a float or a per-sample tensor (B,).

    The setting's rule (a :class:`~lightning_guidance.diffusion.cfg_rule.ClassifierFreeGuidance` or one of its
    variants) replaces the plain combination. A rule whose guide is another model (autoguidance, Karras et al. 2024)
    reads the setting's weak model, called with the *same* class ids; when both networks have one architecture their
    forwards can run as one stacked call (:class:`StackedPair`), else one after the other; ``batch_guide`` chooses
    (default: stacked on CUDA, two calls on CPU, where bench/cfg_variant_cost.py measured stacking slower). A rule
    with a ``perturbation`` (perturbed-attention / skip-layer guidance) reads the weak model as the network with its
    self-attention perturbed, called on the conditional batch. The rule's state (APG's momentum) lives here, one dict
    per sampling run.
    """

    def __init__(self, net: nn.Module, num_classes: int, prediction: str = "eps",
                 setting: GuidanceSetting | None = None, clip_x0: bool = True, batch_guide: bool | None = None):
        self.net = net
        self.num_classes = num_classes
        self.prediction = check_prediction(prediction)
        self.setting = setting if setting is not None else GuidanceSetting()
        self.clip_x0 = clip_x0
        self.rule = self.setting.cfg_rule
        weak = self.setting.weak_model
        self.weak_prediction = weak.prediction if weak is not None else self.prediction
        self.guide_net = weak.net if weak is not None and self.rule.guide_is_other_model else None
        self.perturbed_net = weak.net if weak is not None and self.rule.perturbation is not None else None
        if batch_guide is None:  # measured: stacking costs 1.37x two calls on one CPU thread; it pays off on a GPU
            batch_guide = any(p.is_cuda for p in net.parameters())
        guide = self.guide_net
        self.pair = (StackedPair(net, guide) if isinstance(guide, nn.Module) and batch_guide
                     and self.weak_prediction == self.prediction and same_architecture(net, guide) else None)
        self.reset()

    @property
    def null_class(self) -> int:
        return self.num_classes

    def reset(self) -> None:
        """Forget the rule's state (a new sampling run)."""
        self.rule_state: dict = {}
        self._last_step = -1

    def __call__(self, x_t: Tensor, t: Tensor, abar: Tensor, y: Tensor,
                 step: SamplingStep | None = None) -> DenoiserOutput:
        check_labels(y, self.num_classes, allow_null=True)
        t = t.to(x_t.dtype)
        if step is not None:
            if step.index < self._last_step:  # the denoiser is being reused for another run
                self.reset()
            self._last_step = step.index
        ctx = RuleContext(x_t=x_t, abar=abar, step=step)
        eps_u = eps_g = None
        s = self.setting.cfg_scale
        if not self.rule.needs_guide(s, ctx):
            eps_c = prediction_to_eps(self.prediction, self.net(x_t, t, y), x_t, abar)
        elif self.guide_net is not None:
            eps_c, eps_g = self._with_guide_net(x_t, t, abar, y)
        else:
            null = torch.full_like(y, self.null_class)
            out = self.net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))
            both = prediction_to_eps(self.prediction, out, torch.cat([x_t, x_t]), torch.cat([abar, abar]))
            eps_c, eps_u = both.chunk(2)
            eps_g = eps_u
        if self.rule.needs_perturbed(ctx):  # a separate call: the perturbation holds for a whole forward
            ctx.perturbed = prediction_to_eps(self.weak_prediction, self.perturbed_net(x_t, t, y), x_t, abar)
        eps = combine_predictions(self.rule, eps_c, eps_g, s, ctx, self.rule_state)
        guided = eps_g is not None
        return DenoiserOutput(eps=eps, x0=self._x0(eps, x_t, abar), eps_cond=eps_c if guided else None,
                              eps_uncond=eps_u)

    def _with_guide_net(self, x_t: Tensor, t: Tensor, abar: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The main and the guiding model's eps for the same class ids (one stacked call where possible)."""
        if self.pair is not None:
            out_c, out_g = self.pair(x_t, t, y)
        else:
            out_c, out_g = self.net(x_t, t, y), self.guide_net(x_t, t, y)
        return (prediction_to_eps(self.prediction, out_c, x_t, abar),
                prediction_to_eps(self.weak_prediction, out_g, x_t, abar))

    def _x0(self, eps: Tensor, x_t: Tensor, abar: Tensor) -> Tensor:
        x0 = eps_to_x0(eps, x_t, abar)
        return x0.clamp(-1, 1) if self.clip_x0 else x0
