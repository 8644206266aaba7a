"""Sample quality as seen by a judge classifier: an Inception-Score-like score and conditional accuracy.

The judge must be a network trained on clean data that differs (architecture and seed) from every classifier used
for guidance, or guidance is graded by its own teacher (docs/math.md §6).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy


class ClassifierScore(Metric):
    """``exp(E_x KL(p(y|x) || p(y)))`` with ``p(y) = E_x p(y|x)`` under a judge (Salimans et al. 2016, sec. 4).

    ``update(logits (B, C))`` with the judge's logits on generated samples; ``compute()`` returns the score, which
    lies in [1, C]. Uses ``E_x KL = H(p(y)) - E_x H(p(y|x))``, so the states are sums (exact across batches and ranks)
    and the whole set is one split. Not torchmetrics' ``InceptionScore``, which keeps every feature vector, shuffles
    them randomly and averages over splits.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.num_classes = num_classes
        self.add_state("neg_entropy_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("prob_sum", torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"expected judge logits (B, {self.num_classes}), got {tuple(logits.shape)}")
        log_probs = torch.log_softmax(logits.detach().double(), dim=1)
        probs = log_probs.exp()
        self.neg_entropy_sum += (probs * log_probs).sum()
        self.prob_sum += probs.sum(dim=0)
        self.count += logits.shape[0]

    def compute(self) -> Tensor:
        if int(self.count) == 0:
            raise RuntimeError("ClassifierScore: no samples seen; call update(logits) first")
        marginal = self.prob_sum / self.count
        marginal_entropy = -torch.special.xlogy(marginal, marginal).sum()
        mean_kl = marginal_entropy + self.neg_entropy_sum / self.count
        return mean_kl.clamp_min(0).exp()


def conditional_accuracy(num_classes: int, **kwargs: Any) -> MulticlassAccuracy:
    """Fraction of samples the judge assigns to the class they were generated for: ``update(judge_logits, labels)``.

    torchmetrics' ``MulticlassAccuracy`` with ``average='micro'`` (per sample, not a mean over classes).
    """
    return MulticlassAccuracy(num_classes=num_classes, average="micro", **kwargs)
