"""Evaluation at scale: blocked distances equal unblocked ones, a block never exceeds its stated size, and under DDP
precision/recall gathers no features (each rank keeps its shard) yet equals one process, also when a rank holds no
generated samples at all; the Fréchet statistics are sums (D + D^2 + 1 numbers per set, whatever N)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import run_on_gloo_ranks
from scipy import linalg

from lightning_guidance.metrics import FrechetDistance, GenerativePrecisionRecall
from lightning_guidance.metrics.precision_recall import _row_blocks, ball_hits, knn_radii


def _features(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


@pytest.mark.parametrize("columns, block_bytes", [(1000, 8 * 1000 * 7), (513, 8 * 100), (10, 1 << 20)])
def test_a_block_never_exceeds_its_size(columns, block_bytes):
    blocks = list(_row_blocks(2003, columns, block_bytes))
    assert blocks[0].start == 0 and blocks[-1].stop == 2003
    assert all(a.stop == b.start for a, b in zip(blocks, blocks[1:]))
    assert all((b.stop - b.start) * columns * 8 <= max(block_bytes, columns * 8) for b in blocks)


def test_blocked_distances_equal_one_block():
    real, fake = _features(700, 24, 0), _features(650, 24, 1, shift=0.3)
    tiny = 8 * 700 * 3  # three rows of distances per block
    for backend in ("torch", "faiss"):
        torch.testing.assert_close(knn_radii(real, 3, backend, block_bytes=tiny), knn_radii(real, 3, backend,
                                                                                             block_bytes=1 << 30))
    radii = knn_radii(real, 3, "torch")
    assert torch.equal(ball_hits(fake, real, radii, block_bytes=tiny), ball_hits(fake, real, radii, 1 << 30))
    # and the unblocked truth, straight from all pairwise distances
    full = torch.cdist(fake, real) <= radii.unsqueeze(0)
    assert torch.equal(ball_hits(fake, real, radii, block_bytes=tiny), full.any(dim=1))


def test_frechet_statistics_are_sums_and_blocks_do_not_matter():
    class Identity(torch.nn.Module):
        num_features = 16

        def forward(self, x):
            return x

    real, fake = _features(900, 16, 2).float(), _features(800, 16, 3, shift=0.5).float()
    chunked, whole = FrechetDistance(Identity(), name="fd_t"), FrechetDistance(Identity(), name="fd_t")
    for part in real.split(77):
        chunked.update(part, real=True)
    for part in fake.split(101):
        chunked.update(part, real=False)
    whole.update(real, real=True)
    whole.update(fake, real=False)
    sizes = sum(v.numel() for k, v in chunked.metric_state.items() if k.startswith("real"))
    assert sizes == 16 + 16 * 16 + 1  # sum, sum of outer products, count: independent of N
    a, b = real.double().numpy(), fake.double().numpy()
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    reference = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert float(chunked.compute()) == pytest.approx(reference, rel=1e-6)
    assert float(whole.compute()) == pytest.approx(float(chunked.compute()), rel=1e-9)


WORLD = 2
REAL, FAKE = _features(401, 12, 4), _features(333, 12, 5, shift=0.4)


def _evaluate(real: torch.Tensor, fake: torch.Tensor, block_bytes: int) -> dict:
    pr = GenerativePrecisionRecall(k=3, knn_backend="torch", block_bytes=block_bytes)
    for part in real.split(64):
        pr.update(part, real=True)
    for part in fake.split(64):
        pr.update(part, real=False)
    out = pr.compute()
    return {k: float(v) for k, v in out.items()}


@pytest.mark.timeout(180)
def test_sharded_precision_recall_equals_one_process(tmp_path):
    def evaluate_share(rank: int) -> None:
        # uneven: rank 0 holds 300 real and every generated sample, rank 1 the other 101 real and none generated
        real = REAL[:300] if rank == 0 else REAL[300:]
        fake = FAKE if rank == 0 else FAKE[:0]
        torch.save(_evaluate(real, fake, block_bytes=8 * 401 * 5), tmp_path / f"rank{rank}.pt")

    run_on_gloo_ranks(evaluate_share, WORLD, tmp_path)
    single = _evaluate(REAL, FAKE, block_bytes=1 << 30)
    assert 0.05 < single["precision"] < 0.95 and 0.05 < single["recall"] < 0.95  # a case where both can be wrong
    for rank in range(WORLD):
        assert torch.load(tmp_path / f"rank{rank}.pt") == single
