import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("LG_TEST_THREADS", "1")))


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (the default, pyproject.toml): one test worker a core, at most 4 (``LG_TEST_WORKERS`` overrides).
    Each worker runs torch on one thread, and the DDP tests start two more processes each."""
    return int(os.environ.get("LG_TEST_WORKERS", min(os.cpu_count() or 1, 4)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
