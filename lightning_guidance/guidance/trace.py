"""Watch sampling: a guidance term's gradient size, how often it vanishes, the classifier's confidence; the path.

Javid et al. (2025; docs/math.md §4): an overconfident classifier has ``p(y|x) -> 1`` early in sampling, so
``∇ log p(y|x) -> 0`` and guidance does nothing when it matters most. :class:`GuidanceTrace` wraps a term, passes its
correction through unchanged, and adds per step: the per-sample RMS of the correction divided by the term's
``scale`` (the gradient before its scale; a schedule weight stays in), whether that RMS is below
``vanishing_rms``, and, for classifier terms, the classifier's probability of the requested class on the input the
term reads (``x_t`` at ``t``, or the clamped ``x0_hat``). Sums and counts per step, so that ranks add them up.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion.plug import GuidanceState, GuidanceTerm
from .log_likelihood import ClassifierTerm

#: columns of :attr:`GuidanceTrace.sums`
TRACE_COLUMNS = ("count", "t_sum", "gradient_rms_sum", "vanishing_count", "confidence_sum", "confidence_count")


class GuidanceTrace(GuidanceTerm):
    """``GuidanceTrace(term)``: behaves as ``term`` and records :data:`TRACE_COLUMNS` per sampler step in ``sums``
    (float64, (num_steps, 6), sized at the first call). ``scale`` reads and writes the wrapped term's scale.
    On EDM, a term whose work is done by :meth:`edm_nudge` (EluCD's EDM rule) returns a zero correction, which the
    trace records as vanishing."""

    def __init__(self, term: GuidanceTerm, vanishing_rms: float = 1e-3):
        if vanishing_rms <= 0:
            raise ValueError(f"vanishing_rms must be > 0, got {vanishing_rms}")
        self.term = term
        self.vanishing_rms = float(vanishing_rms)
        self.supported_samplers = term.supported_samplers
        self.sums: Tensor | None = None

    @property
    def scale(self) -> float:
        return self.term.scale

    @scale.setter
    def scale(self, value: float) -> None:
        self.term.scale = value

    @property
    def differentiates_denoiser(self) -> bool:
        return getattr(self.term, "differentiates_denoiser", False)

    @property
    def name(self) -> str:
        return type(self.term).__name__

    def __call__(self, state: GuidanceState) -> Tensor:
        g = self.term(state)
        if self.sums is None:
            self.sums = torch.zeros(state.num_steps, len(TRACE_COLUMNS), dtype=torch.float64)
        if self.sums.shape[0] != state.num_steps:
            raise ValueError(f"one trace per sampler setting: it saw {self.sums.shape[0]} steps, now {state.num_steps}")
        row = self.sums[state.step]
        scale = abs(self.term.scale) if self.term.scale != 0 else 1.0
        rms = g.detach().double().pow(2).flatten(1).mean(dim=1).sqrt().cpu() / scale
        row[0] += len(rms)
        row[1] += float(state.t.detach().double().sum())
        row[2] += float(rms.sum())
        row[3] += float((rms < self.vanishing_rms).sum())
        confidence = self._confidence(state)
        if confidence is not None:
            row[4] += float(confidence.sum())
            row[5] += len(confidence)
        return g

    @torch.no_grad()
    def _confidence(self, state: GuidanceState) -> Tensor | None:
        term = self.term
        if not isinstance(term, ClassifierTerm):
            return None
        with torch.inference_mode(False):
            if term.input == "x_t":
                logits = term.classifier(state.x_t.clone(), state.t.clone())
            else:
                logits = term.classifier(term.x0_input(state.out.x0.clone()), None)
        return torch.softmax(logits.double(), dim=1).gather(1, state.y.view(-1, 1)).squeeze(1).cpu()

    def edm_nudge(self, *args, **kwargs):
        return self.term.edm_nudge(*args, **kwargs)


def summarize_trace(sums: Tensor, vanishing_rms: float) -> dict[str, list[float] | float]:
    """Per-step means from (summed) :data:`TRACE_COLUMNS`, and three headline numbers over all steps."""
    count = sums[:, 0].clamp_min(1)
    has_conf = sums[:, 5] > 0
    confidence = torch.where(has_conf, sums[:, 4] / sums[:, 5].clamp_min(1), torch.full_like(count, float("nan")))
    total = float(sums[:, 0].sum())
    return {
        "t": (sums[:, 1] / count).tolist(),
        "gradient_rms": (sums[:, 2] / count).tolist(),
        "vanishing_fraction": (sums[:, 3] / count).tolist(),
        "confidence": confidence.tolist(),
        "vanishing_rms": vanishing_rms,
        "mean_gradient_rms": float(sums[:, 2].sum()) / max(total, 1),
        "mean_vanishing_fraction": float(sums[:, 3].sum()) / max(total, 1),
        "final_confidence": float(confidence[-1]) if bool(has_conf[-1]) else float("nan"),
    }


class TrajectoryRecorder(GuidanceTerm):
    """Changes nothing (it returns no correction) and keeps the state ``x_t`` (VP coordinates) each sampler step
    starts from, batch after batch; :meth:`path` gives ``(steps + 1, N, ...)``, the final samples last."""

    def __init__(self):
        super().__init__(0.0)
        self.batches: list[list[Tensor]] = []

    def __call__(self, state: GuidanceState) -> None:
        if not self.batches or (state.step == 0 and len(self.batches[-1]) == state.num_steps):
            self.batches.append([])
        if len(self.batches[-1]) == state.step:  # EDM's corrector calls again within a step
            self.batches[-1].append(state.x_t.detach().cpu().clone())

    def path(self, samples: Tensor) -> Tensor:
        steps = torch.cat([torch.stack(states) for states in self.batches], dim=1)
        return torch.cat([steps, samples.detach().cpu()[None].to(steps.dtype)])
