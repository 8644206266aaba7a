"""The calibration fine-tune's loss: cross-entropy plus lambda times a differentiable Smooth ECE (docs/math.md §4)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .ece import top_label_confidence
from .smooth_ece import smooth_ece_bandwidth, smooth_ece_fixed_bandwidth


def calibration_loss(logits: Tensor, y: Tensor, smooth_ece_weight: float, bandwidth: float | None = None,
                     gather: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(CE + λ smECE_sigma, CE, smECE_sigma)`` of one batch: top-label confidences, ``sigma = bandwidth`` or the
    batch's fixed point ``smECE_sigma = sigma`` on detached confidences (then constant: the loss is differentiable).

    Smooth ECE is a statistic of the whole batch, not a mean over samples: under DDP ``gather`` collects every
    rank's confidences (with their gradients), so that each rank computes smECE of the global batch, as one process
    does. Its gradient then reaches each rank's samples once per rank, and DDP's average of the ranks' gradients
    gives exactly the one-process gradient of ``mean CE + λ smECE(global batch)``."""
    ce = F.cross_entropy(logits, y)
    confidence, correct = top_label_confidence(torch.softmax(logits.float(), dim=1), y)
    if gather is not None:
        confidence, correct = gather(confidence), gather(correct)
    sigma = bandwidth or smooth_ece_bandwidth(confidence.detach(), correct)
    smooth = smooth_ece_fixed_bandwidth(confidence, correct, sigma)
    return ce + smooth_ece_weight * smooth, ce, smooth
