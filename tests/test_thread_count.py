"""Does training depend on the number of torch threads? The study's policy rests on the answer (docs/results/README.md,
"Thread count"): the same preset must give the same weights wherever it runs.

The judge (an MLP, the fastest suite model that shows the effect) is fitted in-process through the real CLI for a few
steps at 1 and 2 intra-op threads. At a fixed thread count two fits give bit-identical weights (the property the
policy uses: threads are part of a preset's identity). Across thread counts they differ on CPU builds with MKL and
oneDNN, through three kinds of reductions whose split follows the thread count: MKL's single-precision GEMM on small
output shapes (the 64 -> 10 head's weight gradient reduces over the batch), oneDNN's convolution weight and bias
gradients, and LayerNorm's weight and bias gradients. That test is a strict xfail: should a build make training
thread-count independent, it fails, and the policy can be relaxed.
"""

from __future__ import annotations

import torch
import pytest
from helpers import CONFIGS, cli, load


def fit_judge(root, threads: int, steps: int = 3) -> dict[str, torch.Tensor]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cli("fit", "--config", CONFIGS / "digits/judge.yaml", "--trainer.default_root_dir", root,
            "--trainer.max_steps", steps, "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
            "--trainer.logger", "false")
    finally:
        torch.set_num_threads(before)
    return load(root / "checkpoints" / "last.ckpt")["state_dict"]


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.fixture(scope="module")
def two_thread_fit(tmp_path_factory):
    return fit_judge(tmp_path_factory.mktemp("two-threads"), 2)


def test_the_same_thread_count_gives_bit_identical_weights(tmp_path, two_thread_fit):
    assert differing(fit_judge(tmp_path, 2), two_thread_fit) == []


@pytest.mark.xfail(torch.backends.mkl.is_available() and torch.backends.mkldnn.is_available(), strict=True,
                   reason="training is not thread-count independent with MKL/oneDNN (module docstring)")
def test_one_and_two_threads_give_bit_identical_weights(tmp_path, two_thread_fit):
    assert differing(fit_judge(tmp_path, 1), two_thread_fit) == []
