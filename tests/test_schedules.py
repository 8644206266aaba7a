"""VP schedules and the EDM sigma grid against diffusers' schedulers and numpy interpolation."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, EDMEulerScheduler

from lightning_guidance.diffusion.schedules import VPSchedule, edm_sigma_steps

# diffusers builds its schedules in float32; ours are float64, so compare at float32 accuracy
F32 = dict(rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("ours, theirs", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_betas_and_alphas_cumprod_match_diffusers(ours, theirs):
    schedule = VPSchedule.from_name(ours, 1000)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=theirs)
    torch.testing.assert_close(schedule.betas, ref.betas.double(), **F32)
    # the float32 cumulative product drifts by a few ulps per step
    torch.testing.assert_close(schedule.alphas_cumprod, ref.alphas_cumprod.double(), rtol=1e-4, atol=1e-9)


def test_linear_betas_rescaled_for_fewer_train_steps():
    # improved-DDPM: scale = 1000 / T keeps beta_start * T and beta_end * T fixed
    schedule = VPSchedule.linear(250)
    assert schedule.betas[0].item() == pytest.approx(4e-4) and schedule.betas[-1].item() == pytest.approx(0.08)


def test_q_sample_matches_diffusers_add_noise():
    schedule, ref = VPSchedule.linear(), DDPMScheduler(beta_schedule="linear")
    x0, noise, idx = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4), torch.tensor([0, 1, 250, 500, 998, 999])
    torch.testing.assert_close(schedule.q_sample(x0, idx, noise), ref.add_noise(x0, noise, idx), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_steps", [1000, 250, 50, 20, 7])
def test_respaced_indices_are_diffusers_linspace_timesteps(num_steps):
    ref = DDPMScheduler(num_train_timesteps=1000, timestep_spacing="linspace")
    ref.set_timesteps(num_steps)
    assert VPSchedule.linear().respaced_indices(num_steps).tolist() == ref.timesteps.tolist()


def test_respace_keeps_abar_at_kept_indices():
    schedule, ref = VPSchedule.linear(), DDPMScheduler(beta_schedule="linear")
    respaced, kept = schedule.respace(20)
    assert kept.tolist() == sorted(kept.tolist()) and kept[0] == 0 and kept[-1] == 999
    torch.testing.assert_close(respaced.alphas_cumprod, ref.alphas_cumprod[kept].double(), rtol=1e-4, atol=1e-9)


def test_respace_rejects_bad_step_counts():
    with pytest.raises(ValueError, match="num_steps"):
        VPSchedule.linear().respace(0)
    with pytest.raises(ValueError, match="num_steps"):
        VPSchedule.linear(100).respaced_indices(101)


def test_sigma_and_its_inverse_against_numpy_interpolation():
    schedule = VPSchedule.linear()
    ac = DDPMScheduler(beta_schedule="linear").alphas_cumprod.double().numpy()
    log_sigma = np.log(np.sqrt((1 - ac) / ac))
    i = np.arange(1000)
    np.testing.assert_allclose(schedule.sigma(torch.tensor(i)).numpy(), np.exp(log_sigma), rtol=1e-4)
    # between grid points: log-sigma is interpolated linearly in the index
    query = np.exp(np.linspace(log_sigma[0], log_sigma[-1], 97))
    np.testing.assert_allclose(schedule.index_of_sigma(torch.tensor(query)).numpy(),
                               np.interp(np.log(query), log_sigma, i), atol=2e-3)
    # outside the trained range it clamps to the end steps
    assert schedule.index_of_sigma(1e-6).item() == 0 and schedule.index_of_sigma(1e6).item() == 999
    assert schedule.sigma_min == pytest.approx(np.exp(log_sigma[0]), rel=1e-4)
    assert schedule.sigma_max == pytest.approx(np.exp(log_sigma[-1]), rel=1e-4)


def test_fractional_abar_is_log_linear():
    schedule = VPSchedule.cosine()
    ac = schedule.alphas_cumprod.numpy()
    idx = np.array([0.0, 0.25, 10.5, 500.75, 998.9, 999.0])
    np.testing.assert_allclose(schedule.abar(torch.tensor(idx)).numpy(),
                               np.exp(np.interp(idx, np.arange(1000), np.log(ac))), rtol=1e-12)
    # a Python-float index is the float64 number (500.3 has no exact float32 value: w would be off by 1e-5)
    assert schedule.abar(500.3).item() == pytest.approx(np.exp(np.interp(500.3, np.arange(1000), np.log(ac))),
                                                        rel=1e-12)


@pytest.mark.parametrize("num_steps, sigma_min, sigma_max", [(18, 0.002, 80.0), (40, 0.01, 157.4)])
def test_edm_sigma_steps_match_diffusers_karras_sigmas(num_steps, sigma_min, sigma_max):
    ref = EDMEulerScheduler(sigma_min=sigma_min, sigma_max=sigma_max, rho=7.0, sigma_schedule="karras",
                            final_sigmas_type="zero")
    ref.set_timesteps(num_steps)
    ours = edm_sigma_steps(num_steps, sigma_min, sigma_max)
    assert ours.dtype == torch.float64 and ours[-1] == 0
    torch.testing.assert_close(ours, ref.sigmas.double(), rtol=1e-5, atol=0)


def test_unknown_schedule_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown noise schedule 'quadratic'"):
        VPSchedule.from_name("quadratic")


def test_defaults_are_the_reference_defaults():
    """Called without settings, the schedules are diffusers' defaults: DDPMScheduler() (1000 linear steps) and
    EDMEulerScheduler() (sigma 0.002..80, rho 7, Karras et al. 2022's 18 steps). Catches: a default changed (an
    EDM run or a from_name() caller that relies on it silently samples on another grid)."""
    torch.testing.assert_close(VPSchedule.from_name("linear").betas, DDPMScheduler().betas.double(), **F32)
    ref = EDMEulerScheduler(sigma_schedule="karras", final_sigmas_type="zero")
    ref.set_timesteps(18)
    torch.testing.assert_close(edm_sigma_steps(), ref.sigmas.double(), rtol=1e-5, atol=0)
