"""Integrate the learned flow ``dx/dt = v(x, t)`` from t = 0 (the generated sample) to t = 1, counting the
function evaluations (NFE): Euler with N fixed steps, or dopri5 (Dormand & Prince 1980) from torchdiffeq with
``rtol``/``atol`` (the adaptive solver of Zhao & Schwing 2025, App. D)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

INTEGRATORS = ("euler", "dopri5")
Velocity = Callable[[Tensor, Tensor], Tensor]  # v(x (B, ...), t (B,)) -> (B, ...)


@dataclass
class FlowSolution:
    x: Tensor  # the state at t = 1
    nfe: int  # velocity evaluations (each one a batched forward)


def euler(velocity: Velocity, x0: Tensor, num_steps: int = 20) -> FlowSolution:
    """``x_{i+1} = x_i + h v(x_i, i h)``, ``h = 1 / num_steps``; NFE = ``num_steps``."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    h = 1.0 / num_steps
    x = x0
    for i in range(num_steps):
        t = torch.full((x.shape[0],), i * h, dtype=x.dtype, device=x.device)
        x = x + h * velocity(x, t)
    return FlowSolution(x, num_steps)


def dopri5(velocity: Velocity, x0: Tensor, rtol: float = 1e-5, atol: float = 1e-5) -> FlowSolution:
    """Adaptive Dormand-Prince 5(4) through ``torchdiffeq.odeint``; the error norm (so the step size) is
    shared by the batch: a sample's result depends on its batch-mates within the tolerances."""
    from torchdiffeq import odeint

    if rtol <= 0 or atol <= 0:
        raise ValueError(f"rtol and atol must be > 0, got {rtol} and {atol}")
    count = [0]

    def field(t: Tensor, x: Tensor) -> Tensor:
        count[0] += 1
        return velocity(x, t.to(x.dtype).expand(x.shape[0]))

    times = torch.tensor([0.0, 1.0], dtype=x0.dtype, device=x0.device)
    x1 = odeint(field, x0, times, method="dopri5", rtol=rtol, atol=atol)[-1]
    return FlowSolution(x1, count[0])


INTEGRATOR_OPTIONS = {"euler": {"num_steps": 20}, "dopri5": {"rtol": 1e-5, "atol": 1e-5}}


def check_integrator(integrator: str, integrator_kwargs: dict | None = None) -> dict:
    """The integrator's options with its defaults filled in; a clear error for an unknown integrator or option."""
    if integrator not in INTEGRATOR_OPTIONS:
        raise ValueError(f"unknown integrator {integrator!r}; choose one of {', '.join(INTEGRATORS)}")
    options = dict(INTEGRATOR_OPTIONS[integrator])
    unknown = sorted(set(integrator_kwargs or {}) - set(options))
    if unknown:
        raise ValueError(f"the {integrator} integrator has no option {', '.join(unknown)}; it takes: "
                         f"{', '.join(options)}")
    options.update(integrator_kwargs or {})
    return options


def integrate(velocity: Velocity, x0: Tensor, integrator: str = "euler", **integrator_kwargs) -> FlowSolution:
    """Run ``integrator`` ("euler": ``num_steps``; "dopri5": ``rtol``, ``atol``)."""
    options = check_integrator(integrator, integrator_kwargs)
    return euler(velocity, x0, **options) if integrator == "euler" else dopri5(velocity, x0, **options)
