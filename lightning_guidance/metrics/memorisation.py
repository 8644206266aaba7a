"""The memorisation check of a generated set: is it closer to the training data than new real samples are?

Each sample's distance to its nearest training sample (``NearestTrainingDistance`` writes them) against the same
distance of held-out real samples, which were never trained on: a set that copies training samples sits near 0, a set
as far from them as new real data has the held-out distribution. Three figures, each with a percentile-bootstrap
interval (``stats``): the set's median distance; the difference of medians (set minus held-out, the two resampled
independently); and the share of the set below the held-out distances' ``quantile`` (``quantile`` itself for a set
like real data, more when samples crowd the training points), both sets resampled.
"""

from __future__ import annotations

import numpy as np

from ..stats import Interval, bootstrap, unpaired_bootstrap


def memorisation_check(distances: np.ndarray, held_out: np.ndarray, quantile: float = 0.05,
                       num_resamples: int = 1000, seed: int = 0) -> dict[str, Interval]:
    """``distances``: (ids, k), an id's distances at its k settings (e.g. scales), resampled together;
    ``held_out``: (m,). Keys ``median``, ``median_minus_held_out``, ``share_below_held_out_quantile``."""
    d, held = np.asarray(distances, dtype=np.float64), np.asarray(held_out, dtype=np.float64)
    d = d[:, None] if d.ndim == 1 else d
    n, m = len(d), len(held)
    options = {"num_resamples": num_resamples, "seed": seed}
    return {"median": bootstrap(lambda i: np.median(d[i]), n, **options),
            "median_minus_held_out": unpaired_bootstrap(lambda i: np.median(d[i]), n, lambda j: np.median(held[j]), m,
                                                        **options),
            "share_below_held_out_quantile": bootstrap(lambda i, j: np.mean(d[i] < np.quantile(held[j], quantile)),
                                                       (n, m), **options)}
