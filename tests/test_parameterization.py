"""The eps / x0 / v parameterisations against their closed forms (Salimans & Ho 2022, §4) and diffusers.

With ``x_t = a x0 + b eps``, ``a = sqrt(abar)``, ``b = sqrt(1 - abar)``: ``v = a eps - b x0``, ``x0 = a x_t - b v``,
``eps = b x_t + a v``. The oracle for ``v`` is diffusers' ``DDPMScheduler.get_velocity``.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from lightning_guidance.diffusion.denoiser import NetDenoiser
from lightning_guidance.diffusion.guidance_setting import GuidanceSetting
from lightning_guidance.diffusion.parameterization import (
    PREDICTION_KINDS,
    check_prediction,
    eps_to_x0,
    prediction_to_eps,
    training_target,
    x0_to_eps,
)
from lightning_guidance.diffusion.schedules import VPSchedule

SCHEDULE = VPSchedule.linear(1000)


def batch(seed=0, shape=(6, 2, 3, 3)):
    """Clean data, noise, step indices from nearly clean to nearly pure noise, and the noisy state."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    index = torch.tensor([0, 10, 250, 500, 900, 999])[: shape[0]]
    abar = SCHEDULE.alphas_cumprod[index]
    a, b = abar.sqrt().view(-1, 1, 1, 1), (1 - abar).sqrt().view(-1, 1, 1, 1)
    return x0, eps, index, abar, a * x0 + b * eps, a, b


def test_training_targets_are_the_closed_forms():
    """Catches a target with a swapped or missing coefficient (e.g. ``v = b eps - a x0``)."""
    x0, eps, _, abar, _, a, b = batch()
    torch.testing.assert_close(training_target("eps", x0, eps, abar), eps, rtol=0, atol=0)
    torch.testing.assert_close(training_target("x0", x0, eps, abar), x0, rtol=0, atol=0)
    torch.testing.assert_close(training_target("v", x0, eps, abar), a * eps - b * x0, rtol=1e-12, atol=1e-12)


def test_v_target_equals_diffusers_velocity():
    """diffusers' ``get_velocity`` (its own schedule arithmetic) is an independent oracle for ``v``."""
    x0, eps, index, abar, _, _, _ = batch()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    expected = scheduler.get_velocity(x0.float(), eps.float(), index)
    torch.testing.assert_close(training_target("v", x0.float(), eps.float(), abar), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", PREDICTION_KINDS)
def test_a_perfect_prediction_of_each_kind_gives_back_the_true_noise(kind):
    """A network that predicts its target exactly must hand the sampler the true ``eps``, and ``x0`` back from
    it. Catches an inverse that is not the inverse (e.g. ``eps = a x_t + b v`` or ``(x_t - b x0) / a``)."""
    x0, eps, _, abar, x_t, _, _ = batch()
    pred = training_target(kind, x0, eps, abar)
    torch.testing.assert_close(prediction_to_eps(kind, pred, x_t, abar), eps, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_to_x0(eps, x_t, abar), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x0_to_eps(x0, x_t, abar), eps, rtol=1e-9, atol=1e-9)


def test_x0_and_v_recover_x0_by_the_closed_forms():
    """``x0 = a x_t - b v`` and ``eps = b x_t + a v``, written out here rather than through the module."""
    x0, eps, _, abar, x_t, a, b = batch(1)
    v = a * eps - b * x0
    torch.testing.assert_close(a * x_t - b * v, x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(prediction_to_eps("v", v, x_t, abar), b * x_t + a * v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(prediction_to_eps("x0", x0, x_t, abar), (x_t - a * x0) / b, rtol=1e-12, atol=1e-12)


class Oracle(torch.nn.Module):
    """A "network" that returns the exact target of its kind for the (x0, eps) it was built with."""

    num_classes = 3

    def __init__(self, kind, x0, eps, abar):
        super().__init__()
        self.out = training_target(kind, x0, eps, abar).float()

    def forward(self, x, t, y):
        return torch.cat([self.out] * (len(x) // len(self.out)))


@pytest.mark.parametrize("kind", PREDICTION_KINDS)
@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_net_denoiser_converts_each_prediction_kind(kind, cfg_scale):
    """Catches a denoiser that ignores its ``prediction`` (treats a v or x0 output as eps)."""
    x0, eps, _, abar, x_t, _, _ = batch(2)
    den = NetDenoiser(Oracle(kind, x0, eps, abar), 3, prediction=kind, setting=GuidanceSetting(cfg_scale), clip_x0=False)
    out = den(x_t.float(), torch.zeros(6), abar.float(), torch.zeros(6, dtype=torch.long))
    # both CFG halves see the same output, so any scale gives back the true eps and x0
    torch.testing.assert_close(out.eps.double(), eps, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.x0.double(), x0, rtol=1e-3, atol=1e-3)


def test_unknown_prediction_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown prediction 'score'; choose one of \('eps', 'x0', 'v'\)"):
        check_prediction("score")
    for fn in (lambda: training_target("score", *batch()[:2], batch()[3]),
               lambda: prediction_to_eps("score", batch()[0], batch()[4], batch()[3])):
        with pytest.raises(ValueError, match="unknown prediction"):
            fn()


class LabelEcho(torch.nn.Module):
    """A "network" whose output is its class id (null id 3 included) everywhere; counts its forwards."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x, t, y):
        self.batches.append(len(x))
        return y.to(x.dtype).view(-1, *([1] * (x.ndim - 1))).expand_as(x).clone()


@pytest.mark.parametrize("cfg_scale", [0.0, 2.5, torch.tensor([1.5, 3.0, 0.5, 2.0])])
def test_cfg_combines_the_conditional_and_null_halves_the_documented_way(cfg_scale):
    """``eps = eps_u + s (eps_c - eps_u)`` with ``eps_c`` the requested class's output and ``eps_u`` the null
    class's, from one doubled-batch forward. Catches the two halves swapped (which gives ``eps_c + s (eps_u - eps_c)``)
    and a per-sample scale applied to the wrong rows."""
    net = LabelEcho()
    den = NetDenoiser(net, 3, setting=GuidanceSetting(cfg_scale), clip_x0=False)
    y = torch.tensor([0, 1, 2, 1])
    out = den(torch.zeros(4, 2), torch.full((4,), 0.5), torch.full((4,), 0.5), y)
    s = torch.as_tensor(cfg_scale, dtype=torch.float32).expand(4).view(-1, 1)
    torch.testing.assert_close(out.eps_cond, y.float().view(-1, 1).expand(4, 2))
    torch.testing.assert_close(out.eps_uncond, torch.full((4, 2), 3.0))
    torch.testing.assert_close(out.eps, (3.0 + s * (y.float().view(-1, 1) - 3.0)).expand(4, 2))
    assert net.batches == [8]  # one forward of the doubled batch
