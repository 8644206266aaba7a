"""Edges of the math layer that the closed-form tests do not reach: each documented bound is accepted at its edge and
refused just past it with the documented message, and a few formulas are checked at the points where a wrong
comparison or constant would show (survivors of the mutation run, docs/testing.md).
"""

from __future__ import annotations

import math

import pytest
import torch

from lightning_guidance.calibration import smooth_ece_bandwidth, smooth_ece_fixed_bandwidth, top_label_confidence
from lightning_guidance.calibration.ece import calibration_bin_statistics
from lightning_guidance.diffusion.ddim import ddim_sample, ddim_step
from lightning_guidance.diffusion.denoiser import DenoiserOutput
from lightning_guidance.diffusion.edm_heun import edm_heun_sample
from lightning_guidance.diffusion.noise import PerSampleNoise
from lightning_guidance.diffusion.schedules import VPSchedule, edm_sigma_steps
from lightning_guidance.guidance import (DivergenceGuidance, EntropyAdaptiveGuidance, GuidanceState, GuidanceTerm,
                                         LinearSchedule, TimeIntervalSchedule, total_guidance)
from lightning_guidance.guidance.entropy import entropy_scale_factor
from lightning_guidance.toy import GaussianMixture


class Zero:
    """A denoiser predicting eps = 0 (x0 = x_t / sqrt(abar))."""

    num_classes = 1

    def __call__(self, x_t, t, abar, y):
        a = abar.to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))
        return DenoiserOutput(eps=torch.zeros_like(x_t), x0=x_t / a.sqrt())


def test_sampler_and_schedule_bounds():
    y = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^DDIM eta must be >= 0, got -0.5$"):
        ddim_sample(Zero(), VPSchedule.linear(100), y, PerSampleNoise([0, 1]), (3,), num_steps=2, eta=-0.5)
    with pytest.raises(ValueError, match=r"^DDIM with eta > 0 needs a noise tensor for this step$"):
        ddim_step(torch.zeros(2), torch.zeros(2), 0.5, 0.9, eta=1.0)
    with pytest.raises(ValueError, match=r"^need at least one seed$"):
        PerSampleNoise([])
    with pytest.raises(ValueError, match=r"^betas must be a 1-D tensor with at least 2 entries, got shape \(1,\)$"):
        VPSchedule(torch.tensor([0.1]))
    with pytest.raises(ValueError, match=r"got shape \(2, 2\)"):
        VPSchedule(torch.full((2, 2), 0.1))
    assert VPSchedule(torch.tensor([0.1, 0.2])).num_train_steps == 2  # two entries are enough
    with pytest.raises(ValueError, match=r"^EDM needs num_steps >= 2, got 1$"):
        edm_sigma_steps(1)
    assert edm_sigma_steps(2, 0.1, 10.0).tolist() == pytest.approx([10.0, 0.1, 0.0])  # two steps: both ends
    with pytest.raises(ValueError, match=r"EDM needs sigma_min < sigma_max .* got 0.5 and 0.5"):
        edm_heun_sample(Zero(), VPSchedule.linear(1000), y, PerSampleNoise([0, 1]), (3,), sigma_min=0.5,
                        sigma_max=0.5)


def test_schedule_interpolation_edges():
    s = VPSchedule.linear(1000)
    # abar is clamped at the last step (not extrapolated), and is float64 at fractional indices
    assert float(s.abar(1000.0)) == pytest.approx(float(s.alphas_cumprod[-1]), rel=1e-12) == float(s.abar(5000.0))
    assert s.abar(2.5).dtype == torch.float64
    assert float(s.abar(2.5)) == pytest.approx(math.sqrt(float(s.alphas_cumprod[2] * s.alphas_cumprod[3])), rel=1e-12)
    # the inverse of sigma at the steps (between them the two interpolations differ slightly) and beyond the ends
    for i in (0.0, 1.0, 500.0, 998.0, 999.0):
        assert float(s.index_of_sigma(s.sigma(i))) == pytest.approx(i, abs=1e-9)
    assert float(s.index_of_sigma(1e9)) == pytest.approx(999.0) and float(s.index_of_sigma(1e-9)) == 0.0
    # the cosine betas are float64 (a float32 round trip would move them by ~1e-9)
    betas = VPSchedule.cosine(1000).betas
    assert betas.dtype == torch.float64 and not torch.equal(betas, betas.float().double())


def test_total_guidance_names_a_term_of_the_wrong_shape():
    class Wrong(GuidanceTerm):
        def gradient(self, state):
            return torch.zeros(3)

    x = torch.zeros(2, 4)
    state = GuidanceState(x_t=x, t=torch.zeros(2), abar=torch.ones(2) * 0.5, y=torch.zeros(2, dtype=torch.long),
                          out=DenoiserOutput(eps=x, x0=x), step=0, num_steps=1, sampler="ddim")
    with pytest.raises(ValueError, match=r"^Wrong returned shape \(3,\), expected \(2, 4\)$"):
        total_guidance([Wrong()], state)


def test_guidance_setting_bounds():
    clf = torch.nn.Linear(2, 3)
    clf.num_classes = 3
    DivergenceGuidance(clf, label_smoothing=0.0)  # the closed end of [0, 1)
    with pytest.raises(ValueError, match=r"^label_smoothing must be in \[0, 1\), got 1.0$"):
        DivergenceGuidance(clf, label_smoothing=1.0)
    with pytest.raises(ValueError, match=r"^max_factor must be >= 1, got 0.5$"):
        EntropyAdaptiveGuidance(clf, max_factor=0.5)
    EntropyAdaptiveGuidance(clf, max_factor=1.0)
    assert TimeIntervalSchedule(0.0, 0.0).t_min == 0.0  # both ends included
    with pytest.raises(ValueError, match=r"need 0 <= t_min <= t_max <= 1, got t_min=-0.1, t_max=1.0"):
        TimeIntervalSchedule(-0.1, 1.0)
    # LinearSchedule goes from start to end over the steps; with two steps it is at each end once
    ramp = LinearSchedule(2.0, 0.0)
    assert [ramp(i, 2) for i in range(2)] == [2.0, 0.0] and [ramp(i, 5) for i in range(5)] == [2.0, 1.5, 1.0, 0.5, 0.0]
    assert ramp(0, 1) == 2.0
    # the default ramp is the documented 1 -> 0
    assert [LinearSchedule()(i, 3) for i in range(3)] == [1.0, 0.5, 0.0]


def test_entropy_factor_is_clamped_to_one_below():
    """``clamp(log K / H, 1, max_factor)``: a uniform prediction gives exactly 1, a confident one the cap, and no
    factor is ever below 1."""
    logits = torch.tensor([[0.0, 0.0, 0.0], [20.0, 0.0, 0.0], [1.0, 0.5, 0.0]])
    factor = entropy_scale_factor(logits, max_factor=10.0)
    assert factor[0] == pytest.approx(1.0) and factor[1] == 10.0 and 1.0 < factor[2] < 10.0
    assert (entropy_scale_factor(torch.randn(50, 4) * 0.01, 10.0) >= 1.0).all()


def test_calibration_edges():
    with pytest.raises(ValueError, match=r"^expected probs \(N, C\) and labels \(N,\), got \(3,\) and \(3,\)$"):
        top_label_confidence(torch.ones(3) / 3, torch.zeros(3, dtype=torch.long))
    # one bin is allowed: everything in it, ECE = |mean confidence - accuracy|
    confidence = torch.tensor([0.2, 0.9, 0.6], dtype=torch.float64)
    correct = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    count, conf_sum, correct_sum = calibration_bin_statistics(confidence, correct, 1)
    assert count.tolist()[0] == 3 and conf_sum.tolist()[0] == pytest.approx(1.7)
    # the first bin holds [0, 1/n): confidence 0 lands in bin 0, 0.1 in bin 1 (n = 10)
    count, _, _ = calibration_bin_statistics(torch.tensor([0.0, 0.1, 0.95], dtype=torch.float64),
                                             torch.zeros(3, dtype=torch.float64), 10)
    assert count[0] == 1 and count[1] == 1 and count[9] == 1
    with pytest.raises(ValueError, match=r"expected confidence and correct of equal shape \(N,\), got \(3,\) and "
                                         r"\(2,\)"):
        smooth_ece_fixed_bandwidth(confidence, correct[:2], 0.1)
    with pytest.raises(ValueError, match=r"need num_grid >= 3 and num_eval >= 2, got 2 and 2"):
        smooth_ece_fixed_bandwidth(confidence, correct, 0.1, num_grid=2, num_eval=2)
    smooth_ece_fixed_bandwidth(confidence, correct, 0.1, num_grid=3, num_eval=2)  # the smallest grids allowed
    assert smooth_ece_fixed_bandwidth(confidence.float(), correct.float(), 0.1).dtype == torch.float32
    # a miscalibration above 1 in size at every bandwidth: the bisection's upper end, 1, is returned
    assert smooth_ece_bandwidth(torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)) == 1.0


def test_mixture_input_checks():
    means, covs = torch.zeros(2, 1), torch.ones(2, 1, 1)
    with pytest.raises(ValueError, match="weights must be non-negative with a positive sum"):
        GaussianMixture(means, covs, torch.tensor([1.0, -1.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        GaussianMixture(means, covs, torch.ones(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        GaussianMixture(means, covs, torch.ones(2), torch.tensor([0, 1, 1]))
    mixture = GaussianMixture(torch.tensor([[0.0], [3.0]]), covs, torch.ones(2), torch.tensor([0, 1]))
    assert mixture.means.dtype == torch.float64
    # a scalar class id is broadcast to every row
    x = torch.tensor([[0.1], [2.9]], dtype=torch.float64)
    torch.testing.assert_close(mixture.log_prob(x, torch.tensor(1)), mixture.log_prob(x, torch.tensor([1, 1])))
