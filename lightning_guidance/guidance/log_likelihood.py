"""What every classifier-based term shares: the tempered log-likelihood, the classifier's input, and its gradient.

- ``log p_{tau1,tau2}(y|x) = tau1 f_y(x) - logsumexp_i(tau2 f_i(x))`` (EluCD, Ma et al. §4.4, docs/math.md §3.3);
  ``tau1 = tau2 = 1`` is ``log softmax(f)_y``, ``tau2 = 0`` is the pure logit ``f_y`` minus ``log K``.
- The classifier reads either the noisy state ``x_t`` (a time-dependent classifier, called with ``t``;
  Dhariwal & Nichol 2021) or the denoised estimate ``x0_hat`` clamped to ``[-1, 1]`` with ``clip_x0`` (an off-the-shelf
  classifier, called with ``t=None``; EluCD §4.1). For ``x0_hat`` the reference takes ``∇_{x0_hat}`` with ``x0_hat``
  detached from the denoiser and uses it in place of ``∇_{x_t}``; ``through_denoiser=True`` differentiates through
  the denoiser: through the step's own denoiser call, which the samplers then make at a leaf ``x_t`` with the graph
  kept (``diffusion.plug.denoise_for_guidance``: one more denoiser *backward* per step, no second forward); a state
  built without that graph (by hand) gets ``x0_hat`` recomputed from ``state.denoiser`` at a leaf.
- Gradients are taken with ``torch.autograd.grad`` on a detached leaf inside ``torch.enable_grad()``, since samplers
  run under ``no_grad``, and outside ``torch.inference_mode`` (Lightning's predict loop turns it on). The per-sample
  gradient is the gradient of the batch sum, which assumes the classifier treats samples independently (eval mode:
  no batch-norm statistics, no dropout).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..diffusion.cfg_rule import SamplingStep
from ..diffusion.denoiser import DenoiserOutput, check_labels
from ..diffusion.parameterization import per_sample
from ..diffusion.plug import DenoiserGraph, GuidanceState, GuidanceTerm

CLASSIFIER_INPUTS = ("x_t", "x0_hat")

#: ``objective(logits (B, K), y (B,)) -> (B,)``: the per-sample quantity a term ascends
Objective = Callable[[Tensor, Tensor], Tensor]


def log_likelihood(logits: Tensor, y: Tensor, tau1: float = 1.0, tau2: float = 1.0) -> Tensor:
    """``tau1 f_y - logsumexp_i(tau2 f_i)`` per sample (B,)."""
    f_y = logits.gather(1, y.view(-1, 1)).squeeze(1)
    return tau1 * f_y - torch.logsumexp(tau2 * logits, dim=1)


def entropy(logits: Tensor) -> Tensor:
    """``H(softmax(f)) = -sum_i p_i log p_i`` per sample (B,)."""
    log_p = torch.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def per_sample_rms(x: Tensor) -> Tensor:
    """Root mean square over every dimension but the batch, shaped (B, 1, ..., 1) to broadcast against ``x``."""
    return per_sample(x.pow(2).flatten(1).mean(dim=1).sqrt(), x)


def objective_gradient(classifier: nn.Module, x: Tensor, t: Tensor | None, y: Tensor, objective: Objective,
                       to_input: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``∇_x sum_b objective(classifier(to_input(x), t), y)_b`` with ``x`` a fresh leaf.

    Returns ``(gradient like x, objective (B,) detached, logits (B, K) detached)``.
    """
    # Lightning's predict runs under torch.inference_mode(), which enable_grad() does not lift: leave it, and
    # clone the inference tensors that autograd may save (x, t, y) into normal ones
    with torch.inference_mode(False), torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        t = None if t is None else t.clone()
        y = y.clone()
        logits = classifier(leaf if to_input is None else to_input(leaf), t)
        value = objective(logits, y)
        if value.shape != (x.shape[0],):
            raise ValueError(f"a guidance objective must return one value per sample, got shape {tuple(value.shape)}")
        (grad,) = torch.autograd.grad(value.sum(), leaf)
    return grad, value.detach(), logits.detach()


def graph_objective_gradient(classifier: nn.Module, graph: DenoiserGraph, y: Tensor, objective: Objective,
                             to_input: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """``∇_{x_t} sum_b objective(classifier(to_input(x0_hat(x_t))), y)_b`` through the recorded denoiser call
    ``graph`` (its leaf ``x_t``, its attached ``out.x0``), as :func:`objective_gradient` returns it. The graph is
    kept (``retain_graph``): another term of the same step may differentiate through it too."""
    with torch.inference_mode(False), torch.enable_grad():
        logits = classifier(to_input(graph.out.x0), None)
        value = objective(logits, y.clone())
        if value.shape != (graph.x_t.shape[0],):
            raise ValueError(f"a guidance objective must return one value per sample, got shape {tuple(value.shape)}")
        (grad,) = torch.autograd.grad(value.sum(), graph.x_t, retain_graph=True)
    return grad, value.detach(), logits.detach()


def num_classes_of(classifier: nn.Module, logits: Tensor | None = None) -> int:
    k = getattr(classifier, "num_classes", None)
    if k is None and logits is not None:
        k = logits.shape[1]
    if k is None:
        raise AttributeError(f"{type(classifier).__name__} has no num_classes attribute; give it one")
    return int(k)


class ClassifierTerm(GuidanceTerm):
    """Base of every classifier-based term: the correction is ``scale * schedule * gradient(state)``.

    ``input``: ``"x_t"`` (time-dependent classifier) or ``"x0_hat"`` (off-the-shelf classifier, see module doc);
    ``through_denoiser`` only applies to ``"x0_hat"``; ``clip_x0``: ``x0_hat`` is clamped to ``[-1, 1]``, the range
    of images (false: never, e.g. for the toy mixtures; None: as the denoiser gives it, clamped when the diffusion
    model clips its x0_hat, ``CFGDiffusion(clip_x0)``);
    ``schedule``: a callable ``(step, num_steps, t) -> weight`` from :mod:`.schedules` (None: 1).
    """

    def __init__(self, classifier: nn.Module, scale: float = 1.0, schedule: Callable | None = None,
                 input: str = "x_t", through_denoiser: bool = False, clip_x0: bool | None = None):
        super().__init__(scale)
        if input not in CLASSIFIER_INPUTS:
            raise ValueError(f"unknown classifier input {input!r}; choose one of {CLASSIFIER_INPUTS}")
        if through_denoiser and input != "x0_hat":
            raise ValueError("through_denoiser=True needs input='x0_hat' (x_t is already the leaf)")
        self.classifier = classifier
        self.schedule = schedule
        self.input = input
        self.through_denoiser = bool(through_denoiser)
        self.clip_x0 = None if clip_x0 is None else bool(clip_x0)
        self._classes_checked = False

    @property
    def differentiates_denoiser(self) -> bool:
        return self.through_denoiser

    def __call__(self, state: GuidanceState) -> Tensor:
        g = self.gradient(state)
        if self.schedule is not None:
            g = per_sample(self.schedule(state.step, state.num_steps, state.t), g) * g
        return self.scale * g

    # ---- the classifier's input and the gradient ---------------------------------------------------
    def x0_input(self, x0: Tensor) -> Tensor:
        """The classifier's input made from ``x0_hat``: clamped to [-1, 1] when ``clip_x0``."""
        return x0.clamp(-1, 1) if self.clip_x0 else x0

    def check_classes(self, state: GuidanceState) -> None:
        """Once: the classifier and the denoiser must agree on the number of classes; the labels must fit."""
        if self._classes_checked:
            return
        k = num_classes_of(self.classifier)
        k_denoiser = getattr(state.denoiser, "num_classes", None)
        if k_denoiser is not None and int(k_denoiser) != k:
            raise ValueError(f"{type(self).__name__}: the classifier has {k} classes but the denoiser has "
                             f"{k_denoiser}; use a classifier trained on the same label set")
        check_labels(state.y, k)
        self._classes_checked = True

    def objective_gradient(self, state: GuidanceState, objective: Objective) -> tuple[Tensor, Tensor, Tensor]:
        """Gradient of ``sum_b objective`` w.r.t. ``x_t`` (or ``x0_hat`` used in its place); see module doc."""
        self.check_classes(state)
        if self.input == "x_t":
            return objective_gradient(self.classifier, state.x_t, state.t, state.y, objective)
        if not self.through_denoiser:
            return objective_gradient(self.classifier, self.x0_input(state.out.x0), None, state.y, objective)
        if state.denoiser_graph is not None:
            return graph_objective_gradient(self.classifier, state.denoiser_graph, state.y, objective, self.x0_input)
        if state.denoiser is None:
            raise ValueError(f"{type(self).__name__}(through_denoiser=True) needs state.denoiser; the sampler "
                             "did not provide one")

        def denoised(x_t: Tensor) -> Tensor:
            return self.x0_input(state.denoiser(x_t, state.t, state.abar, state.y,
                                               step=SamplingStep(state.step, state.num_steps)).x0)

        return objective_gradient(self.classifier, state.x_t, None, state.y, objective, to_input=denoised)

    def x0_hat_gradient(self, x: Tensor, y: Tensor, denoise: Callable[[Tensor], DenoiserOutput],
                        objective: Objective) -> tuple[Tensor, Tensor, Tensor]:
        """The same as :meth:`objective_gradient` for a state ``x`` known only through ``denoise`` (EDM nudge)."""
        check_labels(y, num_classes_of(self.classifier))
        if self.through_denoiser:
            return objective_gradient(self.classifier, x, None, y, objective,
                                      to_input=lambda leaf: self.x0_input(denoise(leaf).x0))
        return objective_gradient(self.classifier, self.x0_input(denoise(x).x0), None, y, objective)

