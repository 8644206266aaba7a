"""A sweep refuses, before sampling, guides that cannot work with the diffusion model it samples; sampler options
are checked when a module or callback is built."""

from __future__ import annotations

import pytest
from torch import nn

from lightning_guidance.diffusion.sampling import check_sampling
from lightning_guidance.guidance import ClassifierGuidance, CFGPlusClassifierGuidance, OffTheShelfGuidance
from lightning_guidance.guidance.sweep import Sweep


def check_guides(terms, diffusion, cfg_scales):
    """The guide checks of a CFG sweep over ``cfg_scales`` against a cosine/1000-step digits model."""
    Sweep("cfg", cfg_scales, 1.0, terms).check_against(10, (1, 8, 8), "cosine", 1000)


DIFFUSION = None


class Guide(nn.Module):
    def __init__(self, num_classes=10, data_shape=(1, 8, 8), noisy=True, schedule_name="cosine", steps=1000):
        super().__init__()
        self.num_classes, self.data_shape, self.noisy = num_classes, data_shape, noisy
        self.schedule_name, self.num_train_steps, self.checkpoint = schedule_name, steps, "guide.ckpt"


def test_a_matching_noisy_guide_passes():
    check_guides([ClassifierGuidance(Guide())], DIFFUSION, [1.0])


@pytest.mark.parametrize("term,match", [
    (ClassifierGuidance(Guide(num_classes=1000)), "1000 classes but the diffusion model has 10"),
    (ClassifierGuidance(Guide(data_shape=(3, 32, 32))), r"built for inputs \(3, 32, 32\)"),
    (ClassifierGuidance(Guide(noisy=False)), "reads the noisy x_t but guide.ckpt is a clean classifier"),
    (ClassifierGuidance(Guide(schedule_name="linear")), "trained on a linear schedule of 1000 steps"),
])
def test_mismatched_guides_are_refused(term, match):
    with pytest.raises(ValueError, match=match):
        check_guides([term], DIFFUSION, [1.0])


def test_clean_guide_on_x0_hat_is_fine_and_cfg_plus_classifier_needs_cfg():
    check_guides([OffTheShelfGuidance(Guide(noisy=False))], DIFFUSION, [1.0])
    with pytest.raises(ValueError, match="every CFG scale used must differ from 1"):
        check_guides([CFGPlusClassifierGuidance(Guide(noisy=False))], DIFFUSION, [1.0, 2.0])
    check_guides([CFGPlusClassifierGuidance(Guide(noisy=False))], DIFFUSION, [1.5, 2.0])


def test_guidance_sweep_checks_its_one_cfg_scale():
    sweep = Sweep("guidance", [0.0, 2.0], 1.0, [CFGPlusClassifierGuidance(Guide(noisy=False))])
    with pytest.raises(ValueError, match="every CFG scale used must differ from 1"):
        sweep.check_against(10, (1, 8, 8), "cosine", 1000)


def test_sweep_values_scale_the_terms_or_the_cfg():
    term = ClassifierGuidance(Guide(), scale=3.0)
    cfg, terms = Sweep("guidance", [0.0, 2.0], 1.5, [term]).at(2.0)
    assert cfg == 1.5 and terms[0].scale == 6.0 and term.scale == 3.0 and terms[0].classifier is term.classifier
    cfg, terms = Sweep("cfg", [1.0, 4.0], 1.5, [term]).at(4.0)
    assert cfg == 4.0 and terms == [term]
    with pytest.raises(ValueError, match="target must be one of"):
        Sweep("scale", [1.0])


@pytest.mark.parametrize("sampler,kwargs,match", [
    ("ddim", {"num_steps": 0}, "num_steps must be an integer >= 1"),
    ("ddim", {"num_steps": "50"}, "num_steps must be an integer >= 1"),
    ("edm", {"num_steps": 2.5}, "num_steps must be an integer >= 1"),
    ("ddim", {"eta": -1.0}, "eta must be >= 0"),
    ("ddim", {"steps": 50}, "has no option steps"),
    ("edm", {"S_churn": "a lot"}, "S_churn must be a number"),
    ("heun", {}, "unknown sampler 'heun'"),
])
def test_bad_sampler_options_fail_at_construction(sampler, kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_sampling(sampler, kwargs)


def test_good_sampler_options_pass():
    assert check_sampling("ddpm", {"num_steps": None}) == {"num_steps": None}
    assert check_sampling("edm", {"num_steps": 18, "S_churn": 40, "sigma_max": None}) == \
        {"num_steps": 18, "S_churn": 40, "sigma_max": None}
