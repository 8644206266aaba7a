"""Reference statistics of Inception features (the mean and covariance of a real image set) read from an ``.npz``.

The ImageNet evaluation suites publish them this way (guided-diffusion's ``VIRTUAL_imagenet256_labeled.npz``,
pytorch-fid's ``fid_stats_*.npz``): arrays ``mu`` (D,) and ``sigma`` (D, D). FID against such a file needs no
real-image folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_reference_statistics(path: str | Path, num_features: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` as float64 of a reference file; one-line errors for a missing, foreign or misshapen file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics not found: {path} (an .npz with the arrays mu and sigma of "
                                "Inception features, as the ImageNet evaluation suites publish them)")
    try:
        with np.load(path) as z:
            mu, sigma = np.asarray(z["mu"], dtype=np.float64), np.asarray(z["sigma"], dtype=np.float64)
    except Exception as err:  # noqa: BLE001 - any unreadable file is one message naming it
        raise ValueError(f"{path} is not a reference statistics file (an .npz with arrays mu and sigma): "
                         f"{type(err).__name__}: {str(err)[:120]}") from err
    if mu.shape != (num_features,) or sigma.shape != (num_features, num_features):
        raise ValueError(f"{path} holds mu {mu.shape} and sigma {sigma.shape}; Inception pool features need "
                         f"({num_features},) and ({num_features}, {num_features})")
    return mu, sigma
