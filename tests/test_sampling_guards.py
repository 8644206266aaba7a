"""A sweep refuses, before sampling, guides that cannot work with the diffusion model it samples; sampler options
are checked when a module or callback is built.

The guide checks run on real objects: a diffusion model loaded from a checkpoint (``CFGDiffusion.from_checkpoint``)
and guides loaded through ``TrainedClassifier`` from classifier checkpoints, both written here by hand (an MLP net,
so that nothing trains). Each refusal is paired with the same guide accepted when only the checked attribute
matches, so a guard that refuses everything fails as surely as one that refuses nothing.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_guidance.diffusion.sampling import check_sampling
from lightning_guidance.guidance import CFGPlusClassifierGuidance, ClassifierGuidance, OffTheShelfGuidance
from lightning_guidance.guidance.sweep import Sweep
from lightning_guidance.modules.cfg_diffusion import CFGDiffusion
from lightning_guidance.nets import MLPClassifier, TrainedClassifier, UNet


def _state(net):
    return {f"net.{k}": v for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def diffusion(tmp_path_factory):
    """A 10-class digits-shaped CFG model on a cosine schedule of 1000 steps, loaded from its checkpoint."""
    root = tmp_path_factory.mktemp("guards")
    init = {"data_shape": [1, 8, 8], "num_classes": 10, "model_channels": 8, "num_res_blocks": 1,
            "channel_mult": [1], "attention_resolutions": []}
    net = UNet(**init)
    torch.save({"hyper_parameters": {"net": {"class_path": "lightning_guidance.nets.UNet", "init_args": init},
                                     "schedule": "cosine", "num_train_steps": 1000},
                "state_dict": _state(net)}, root / "cfg.ckpt")
    return CFGDiffusion.from_checkpoint(root / "cfg.ckpt")


def check_guides(terms, diffusion, cfg_scales):
    """The guide checks of a CFG sweep over ``cfg_scales`` against the loaded model's own attributes."""
    hp = diffusion.hparams
    Sweep("cfg", cfg_scales, 1.0, terms).check_against(diffusion.num_classes, diffusion.data_shape, hp.schedule,
                                                        hp.num_train_steps)


def guide(tmp_path, name="guide", num_classes=10, data_shape=(1, 8, 8), noisy=True, schedule="cosine", steps=1000):
    init = {"data_shape": list(data_shape), "num_classes": num_classes, "hidden_dim": 8, "num_layers": 1}
    net = MLPClassifier(**init)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.ckpt"
    torch.save({"hyper_parameters": {"net": {"class_path": "lightning_guidance.nets.MLPClassifier", "init_args": init},
                                     "noisy": noisy, "schedule": schedule, "num_train_steps": steps},
                "state_dict": _state(net)}, path)
    return TrainedClassifier(str(path))


def test_the_loaded_objects_carry_what_the_guards_read(diffusion, tmp_path):
    assert (diffusion.num_classes, diffusion.data_shape) == (10, (1, 8, 8))
    assert (diffusion.hparams.schedule, diffusion.hparams.num_train_steps) == ("cosine", 1000)
    clf = guide(tmp_path, schedule="linear", steps=500, noisy=False)
    assert (clf.num_classes, clf.data_shape, clf.noisy, clf.schedule_name, clf.num_train_steps) == \
        (10, (1, 8, 8), False, "linear", 500)


@pytest.mark.parametrize("mismatch,match", [
    (dict(num_classes=7), "the classifier has 7 classes but the diffusion model has 10"),
    (dict(data_shape=(3, 8, 8)), r"built for inputs \(3, 8, 8\), the samples are \(1, 8, 8\)"),
    (dict(noisy=False), r"reads the noisy x_t but .*guide\.ckpt is a clean classifier"),
    (dict(schedule="linear"), "trained on a linear schedule of 1000 steps, the diffusion model on cosine/1000"),
    (dict(steps=500), "trained on a cosine schedule of 500 steps, the diffusion model on cosine/1000"),
])
def test_a_mismatched_guide_is_refused_and_the_matching_one_accepted(diffusion, tmp_path, mismatch, match):
    """Catches a guard that compares the wrong attribute (or none): the matching guide must pass, the guide that
    differs in one checked attribute only must be refused with the message naming it."""
    check_guides([ClassifierGuidance(guide(tmp_path / "ok"))], diffusion, [1.0])
    with pytest.raises(ValueError, match=match):
        check_guides([ClassifierGuidance(guide(tmp_path, **mismatch))], diffusion, [1.0])


def test_a_clean_guide_reads_x0_hat_and_its_schedule_does_not_matter(diffusion, tmp_path):
    """A clean classifier on ``x0_hat`` has no noise level to match: accepted whatever schedule it records; the same
    classifier on ``x_t`` is refused."""
    clean = guide(tmp_path, noisy=False, schedule="linear", steps=100)
    check_guides([OffTheShelfGuidance(clean)], diffusion, [1.0])
    with pytest.raises(ValueError, match="clean classifier"):
        check_guides([OffTheShelfGuidance(clean, input="x_t")], diffusion, [1.0])
    with pytest.raises(ValueError, match="has 7 classes"):  # the shape and class checks still apply
        check_guides([OffTheShelfGuidance(guide(tmp_path / "k", noisy=False, num_classes=7))], diffusion, [1.0])


def test_cfg_plus_classifier_needs_every_cfg_scale_different_from_one(diffusion, tmp_path):
    clean = guide(tmp_path, noisy=False)
    with pytest.raises(ValueError, match="every CFG scale used must differ from 1"):
        check_guides([CFGPlusClassifierGuidance(clean)], diffusion, [1.0, 2.0])
    check_guides([CFGPlusClassifierGuidance(clean)], diffusion, [1.5, 2.0])


class Guide(nn.Module):
    """A stand-in guide for the sweep arithmetic below (no checkpoint needed)."""

    def __init__(self, num_classes=10, data_shape=(1, 8, 8), noisy=True, schedule_name="cosine", steps=1000):
        super().__init__()
        self.num_classes, self.data_shape, self.noisy = num_classes, data_shape, noisy
        self.schedule_name, self.num_train_steps, self.checkpoint = schedule_name, steps, "guide.ckpt"


def test_guidance_sweep_checks_its_one_cfg_scale():
    sweep = Sweep("guidance", [0.0, 2.0], 1.0, [CFGPlusClassifierGuidance(Guide(noisy=False))])
    with pytest.raises(ValueError, match="every CFG scale used must differ from 1"):
        sweep.check_against(10, (1, 8, 8), "cosine", 1000)


def test_sweep_values_scale_the_terms_or_the_cfg():
    term = ClassifierGuidance(Guide(), scale=3.0)
    setting = Sweep("guidance", [0.0, 2.0], 1.5, [term]).at(2.0)
    terms = setting.terms
    assert setting.cfg_scale == 1.5 and terms[0].scale == 6.0 and term.scale == 3.0
    assert terms[0].classifier is term.classifier
    setting = Sweep("cfg", [1.0, 4.0], 1.5, [term]).at(4.0)
    assert setting.cfg_scale == 4.0 and setting.terms == (term,) and setting.rule is None
    with pytest.raises(ValueError, match="target must be one of"):
        Sweep("scale", [1.0])


@pytest.mark.parametrize("sampler,kwargs,match", [
    ("ddim", {"num_steps": 0}, "num_steps must be an integer >= 1"),
    ("ddim", {"num_steps": "50"}, "num_steps must be an integer >= 1"),
    ("edm", {"num_steps": 2.5}, "num_steps must be an integer >= 1"),
    ("ddim", {"num_steps": None}, "num_steps must be an integer >= 1"),  # None (all steps) is DDPM's only
    ("ddpm", {"num_steps": 0}, "num_steps must be an integer >= 1"),
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
