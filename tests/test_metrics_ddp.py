"""Metrics are DDP-correct: two gloo processes, each updating with a disjoint (uneven) half of the data, compute
what one process computes on all of it."""

import pytest
import torch
from helpers import run_on_gloo_ranks
from torch import nn

from lightning_guidance.metrics import (
    ClassifierScore,
    ECEOverTime,
    FrechetDistance,
    GenerativePrecisionRecall,
    SmoothECE,
)

WORLD_SIZE = 2
NUM_SAMPLES = 301  # odd: the ranks hold different numbers of samples


class Projection(nn.Module):
    num_features = 5

    def __init__(self):
        super().__init__()
        self.register_buffer("weight", torch.randn(16, 5, generator=torch.Generator().manual_seed(7)))

    def forward(self, x):
        return x.flatten(1) @ self.weight


def _data():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(NUM_SAMPLES, 1, 4, 4, generator=g) * 2 - 1
    fake = (torch.rand(NUM_SAMPLES, 1, 4, 4, generator=g) * 2 - 1) * 0.8
    logits = torch.randn(NUM_SAMPLES, 6, generator=g) * 3
    labels = torch.randint(6, (NUM_SAMPLES,), generator=g)
    t = torch.rand(NUM_SAMPLES, generator=g)
    return real, fake, logits, labels, t


def _evaluate(indices: torch.Tensor) -> dict:
    """Update every metric with the samples at ``indices`` (in batches) and compute; collective under DDP."""
    real, fake, logits, labels, t = (x[indices] for x in _data())
    extractor = Projection()
    fd = FrechetDistance(extractor, name="fd_test")
    smooth = SmoothECE()
    over_time = ECEOverTime(num_buckets=3)
    pr = GenerativePrecisionRecall(k=3, knn_backend="torch")
    score = ClassifierScore(num_classes=6)
    for batch in torch.arange(len(indices)).split(50):
        probs = torch.softmax(logits[batch], dim=1)
        fd.update(real[batch], real=True)
        fd.update(fake[batch], real=False)
        smooth.update(probs, labels[batch])
        over_time.update(probs, labels[batch], t[batch])
        pr.update(extractor(real[batch]), real=True)
        pr.update(extractor(fake[batch]), real=False)
        score.update(logits[batch])
    per_time = over_time.compute()
    pr_result = pr.compute()
    return {"fd": fd.compute(), "smooth_ece": smooth.compute(), "ece_per_bucket": per_time["ece_per_bucket"],
            "integral_ece": per_time["integral_ece"], "precision": pr_result["precision"],
            "recall": pr_result["recall"], "classifier_score": score.compute()}


@pytest.mark.timeout(180)
def test_metrics_reduce_across_two_processes(tmp_path):
    def evaluate_share(rank: int) -> None:
        results = _evaluate(torch.arange(rank, NUM_SAMPLES, WORLD_SIZE))  # disjoint slices, no padding
        if rank == 0:
            torch.save(results, tmp_path / "ddp.pt")

    run_on_gloo_ranks(evaluate_share, WORLD_SIZE, tmp_path)
    distributed = torch.load(tmp_path / "ddp.pt")
    single = _evaluate(torch.arange(NUM_SAMPLES))
    assert set(distributed) == set(single)
    for key, value in single.items():
        torch.testing.assert_close(distributed[key].double(), value.double(), rtol=1e-6, atol=1e-9, msg=key)
