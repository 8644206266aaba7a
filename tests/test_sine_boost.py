"""EluCD's sine boost made comparable across schedules: the factor per step that the DDPM sampler really applies, the
figures the study quotes (about 1.6x at the median step in EluCD's linear 250-step setting, 5.9x and up to 467x on
the cosine digits schedule with 50 steps), and the schedule-invariant definition (``sine_reference``).

Oracles: the DDPM sampler itself (a term that records the factor from the sampler's own state), and the respaced
posterior variances written out from the betas with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_guidance.diffusion.noise import PerSampleNoise
from lightning_guidance.diffusion.plug import GuidanceTerm
from lightning_guidance.diffusion.sampling import sample
from lightning_guidance.diffusion.schedules import VPSchedule
from lightning_guidance.guidance import OffTheShelfGuidance
from lightning_guidance.guidance.schedules import (ddpm_step_noise, reference_sine_boost, sine_boost_factor,
                                                   sine_boost_factors)
from lightning_guidance.toy import ExactMixtureDenoiser, two_class_mixture_1d
from test_guidance_terms import B, DT, TinyClassifier, make_state


class RecordBoost(GuidanceTerm):
    """Records, at each DDPM step, the factor the boost applies from the sampler's own state; guides nothing."""

    def __init__(self, gamma: float, reference: str | None = None):
        super().__init__()
        self.gamma, self.reference, self.factors, self.abars = gamma, reference, [], []

    def gradient(self, state):
        self.abars.append(float(state.abar[0]))
        if self.reference is None:
            f = sine_boost_factor(state.step, state.num_steps, self.gamma, state.variance, state.max_variance)
        else:
            f = reference_sine_boost(state.abar, self.gamma, self.reference)
        self.factors.append(float(f[0]))
        return torch.zeros_like(state.x_t)


def sampled_factors(schedule: VPSchedule, num_steps: int, gamma: float, reference: str | None = None):
    term = RecordBoost(gamma, reference)
    denoiser = ExactMixtureDenoiser(two_class_mixture_1d(1.0, 0.3))
    sample("ddpm", denoiser, schedule, torch.tensor([0, 1]), PerSampleNoise([0, 1]), (1,), num_steps=num_steps,
           guidance=[term])
    return torch.tensor(term.factors, dtype=torch.float64), torch.tensor(term.abars, dtype=torch.float64)


@pytest.mark.parametrize("kind, steps", [("cosine", 50), ("linear", 25)])
def test_factors_per_step_are_what_the_ddpm_sampler_applies(kind, steps):
    schedule = VPSchedule.from_name(kind, 1000)
    factors, abars = sampled_factors(schedule, steps, 0.3)
    torch.testing.assert_close(sine_boost_factors(schedule, steps, 0.3), factors)
    torch.testing.assert_close(ddpm_step_noise(schedule, steps)[0], abars)


def test_step_variances_are_the_respaced_posterior_variances():
    schedule = VPSchedule.cosine(1000)
    kept = np.round(np.linspace(0, 999, 50)).astype(int)
    abar = schedule.alphas_cumprod.numpy()[kept]
    prev = np.concatenate([[1.0], abar[:-1]])
    beta = 1 - abar / prev
    expected = (beta * (1 - prev) / (1 - abar))[::-1]  # sampling order: noisiest first
    torch.testing.assert_close(ddpm_step_noise(schedule, 50)[1], torch.from_numpy(expected.copy()))


@pytest.mark.parametrize("kind, steps, median, largest", [
    ("linear", 250, 1.58, 4.41),  # EluCD's DDPM setting
    ("cosine", 50, 5.86, 467.0),  # the digits model's schedule at the study's 50 DDPM steps
])
def test_the_quoted_boost_figures(kind, steps, median, largest):
    f = sine_boost_factors(VPSchedule.from_name(kind, 1000), steps, 0.3)
    assert float(f.median()) == pytest.approx(median, abs=0.01)
    assert float(f.max()) == pytest.approx(largest, rel=0.002)


def test_reference_boost_depends_on_the_noise_level_only():
    """At the reference's own steps it is the reference's factor; on the cosine 50-step schedule, sampled, it stays
    within the reference's range (no 467x); gamma = 0 is no boost."""
    linear = VPSchedule.linear(1000)
    abar, _ = ddpm_step_noise(linear, 250)
    torch.testing.assert_close(reference_sine_boost(abar, 0.3), sine_boost_factors(linear, 250, 0.3))
    cosine = VPSchedule.cosine(1000)
    factors, _ = sampled_factors(cosine, 50, 0.3, reference="linear-250")
    assert 1.0 <= float(factors.min()) and float(factors.max()) <= 4.41
    assert torch.equal(reference_sine_boost(torch.tensor([0.3]), 0.0), torch.ones(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown sine boost reference"):
        reference_sine_boost(abar, 0.3, "cosine-7")


def test_offtheshelf_term_with_a_reference_multiplies_g_by_the_reference_factor():
    clf = TinyClassifier()
    state = make_state(sampler="ddpm", step=3, num_steps=10, variance=torch.full((B,), 0.01, dtype=DT),
                       max_variance=torch.full((B,), 0.5, dtype=DT), abar=0.2)
    plain = OffTheShelfGuidance(clf)(state)
    boosted = OffTheShelfGuidance(clf, sine_gamma=0.3, sine_reference="linear-250")(state)
    factor = reference_sine_boost(state.abar, 0.3)
    assert float(factor[0]) > 1.1
    torch.testing.assert_close(boosted, factor.view(-1, 1) * plain)
    with pytest.raises(ValueError, match="unknown sine_reference"):
        OffTheShelfGuidance(clf, sine_gamma=0.3, sine_reference="cosine")


def test_the_reference_enters_the_shard_hash_only_when_set():
    from lightning_guidance.guidance.sweep import describe_term

    clf = TinyClassifier()
    assert "sine_reference" not in describe_term(OffTheShelfGuidance(clf, sine_gamma=0.3))
    described = describe_term(OffTheShelfGuidance(clf, sine_gamma=0.3, sine_reference="linear-250"))
    assert described["sine_reference"] == "linear-250"
