import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("LG_TEST_THREADS", "1")))


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (the default, pyproject.toml): one test worker a core, at most 4 (``LG_TEST_WORKERS`` overrides).
    Each worker runs torch on one thread, and the DDP tests start two more processes each."""
    return int(os.environ.get("LG_TEST_WORKERS", min(os.cpu_count() or 1, 4)))


# The files that take longest (minutes each on 2 cores: a whole micro study, the kill-and-resume runs, trained
# guides) start first, so that with --dist loadfile no worker is left with one of them at the end while the others
# idle. The order of the rest is pytest's.
LONGEST_FIRST = ("test_study.py", "test_kill_resume.py", "test_guided_sampling.py", "test_toy_training.py",
                 "test_ddp_training.py", "test_study_workers.py", "test_flow_ddp.py")


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
