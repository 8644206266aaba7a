"""SamplingModule refuses, before sampling, guides that cannot work with the diffusion model it loaded."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from torch import nn

from lightning_guidance.guidance import ClassifierGuidance, CFGPlusClassifierGuidance, OffTheShelfGuidance
from lightning_guidance.modules.sampling import check_guides

DIFFUSION = SimpleNamespace(num_classes=10, data_shape=(1, 8, 8),
                            hparams=SimpleNamespace(schedule="cosine", num_train_steps=1000))


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
