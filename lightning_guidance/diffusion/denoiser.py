"""The noise predictor a sampler calls, including classifier-free guidance as one batched forward.

A *denoiser* here is any callable ``(x_t, t, abar, y, step=None) -> DenoiserOutput`` in VP coordinates:
``x_t`` the state, ``t`` the continuous model time (B,), ``abar`` (B,), ``y`` class ids (B,) and ``step`` the
sampler's :class:`~lightning_guidance.diffusion.cfg_rule.SamplingStep` (None outside a sampler).
Samplers (DDPM, DDIM, EDM) only ever see this interface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from .cfg_rule import ClassifierFreeGuidance, RuleContext, SamplingStep, combine_predictions
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
    """Wraps a class-conditional network ``net(x, t, y)`` (null class id = ``num_classes``).

    ``cfg_scale`` s (diffusers' convention): ``eps = eps_u + s (eps_c - eps_u)``; s = 1 is the plain
    conditional model, s = 0 the unconditional one (Ho & Salimans 2021 write w = s - 1). When CFG is
    active the conditional and null halves go through the network as **one** doubled batch.
    ``cfg_scale`` may be a float or a per-sample tensor (B,).

    ``rule`` (a :class:`~lightning_guidance.diffusion.cfg_rule.ClassifierFreeGuidance` or one of its variants)
    replaces the plain combination; a rule whose guide is another model (autoguidance, Karras et al. 2024) needs
    ``guide_net``: the worse model, called with the *same* class ids. When both networks have one architecture
    their forwards can run as one stacked call (:class:`StackedPair`), else one after the other; ``batch_guide``
    chooses (default: stacked on CUDA, two calls on CPU, where bench/cfg_variant_cost.py measured stacking slower). A rule with a ``perturbation`` (perturbed-attention / skip-layer guidance) needs
    ``perturbed_net``: the network with its self-attention perturbed, called on the conditional batch. The rule's
    state (APG's momentum) lives here, one dict per sampling run.
    """

    def __init__(self, net: nn.Module, num_classes: int, prediction: str = "eps", cfg_scale: float | Tensor = 1.0,
                 clip_x0: bool = True, rule: ClassifierFreeGuidance | None = None, guide_net: nn.Module | None = None,
                 guide_prediction: str | None = None, batch_guide: bool | None = None,
                 perturbed_net: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None):
        self.net = net
        self.num_classes = num_classes
        self.prediction = check_prediction(prediction)
        self.cfg_scale = cfg_scale
        self.clip_x0 = clip_x0
        self.rule = rule if rule is not None else ClassifierFreeGuidance()
        if self.rule.guide_is_other_model and guide_net is None:
            raise ValueError(f"{type(self.rule).__name__} guides with a second model: give its network (guide_net)")
        if guide_net is not None and not self.rule.guide_is_other_model:
            raise ValueError(f"a guide network was given but {type(self.rule).__name__} guides with the null class")
        self.guide_net = guide_net
        if self.rule.perturbation is not None and perturbed_net is None:
            raise ValueError(f"{type(self.rule).__name__} reads the model with perturbed self-attention: give "
                             "perturbed_net (nets.attention_perturbation.PerturbedAttention)")
        self.perturbed_net = perturbed_net
        self.guide_prediction = check_prediction(guide_prediction or prediction)
        if batch_guide is None:  # measured: stacking costs 1.37x two calls on one CPU thread; it pays off on a GPU
            batch_guide = any(p.is_cuda for p in net.parameters())
        self.pair = (StackedPair(net, guide_net) if guide_net is not None and batch_guide
                     and self.guide_prediction == self.prediction and same_architecture(net, guide_net) else None)
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
        if not self.rule.needs_guide(self.cfg_scale, ctx):
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
            ctx.perturbed = prediction_to_eps(self.prediction, self.perturbed_net(x_t, t, y), x_t, abar)
        eps = combine_predictions(self.rule, eps_c, eps_g, self.cfg_scale, ctx, self.rule_state)
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
                prediction_to_eps(self.guide_prediction, out_g, x_t, abar))

    def _x0(self, eps: Tensor, x_t: Tensor, abar: Tensor) -> Tensor:
        x0 = eps_to_x0(eps, x_t, abar)
        return x0.clamp(-1, 1) if self.clip_x0 else x0
