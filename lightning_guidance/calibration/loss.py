"""The calibration fine-tune's loss: cross-entropy plus lambda times a differentiable Smooth ECE (docs/math.md §4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .ece import top_label_confidence
from .smooth_ece import smooth_ece_bandwidth, smooth_ece_fixed_bandwidth


def calibration_loss(logits: Tensor, y: Tensor, smooth_ece_weight: float,
                     bandwidth: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(CE + λ smECE_sigma, CE, smECE_sigma)`` of one batch: top-label confidences, ``sigma = bandwidth`` or the
    batch's fixed point ``smECE_sigma = sigma`` on detached confidences (then constant: the loss is differentiable)."""
    ce = F.cross_entropy(logits, y)
    confidence, correct = top_label_confidence(torch.softmax(logits.float(), dim=1), y)
    sigma = bandwidth or smooth_ece_bandwidth(confidence.detach(), correct)
    smooth = smooth_ece_fixed_bandwidth(confidence, correct, sigma)
    return ce + smooth_ece_weight * smooth, ce, smooth
