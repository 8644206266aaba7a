"""What the judge saw of each sample, per graded set: ``<folder>/sample_products/<group>.npz`` (``real.npz`` for the
real set), written atomically next to ``metrics_table.json`` by the test stage.

Arrays, one row per sample, sorted by sample id: ``ids`` (int64; the sample id of a generated set, the dataset index
of a real one), ``labels`` (int64; the class it was generated for, or its true class), ``features`` (float32, the
judge's penultimate features), ``logits`` (float32) and ``probabilities`` (float32, their softmax); ``meta``: a JSON
string (the group, the judge, the settings the table's figures were computed with). The figures of a
``metrics_table.json`` are recomputed from these files, on any subset of ids, by
``metrics.quality_from_products``; paired bootstraps resample the same ids of two sets. No config hash reads them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import atomic_write

PRODUCTS_DIR = "sample_products"
REAL_GROUP = "real"
ARRAYS = ("ids", "labels", "features", "logits", "probabilities")


def products_path(folder: str | Path, group: str) -> Path:
    """``<folder>/sample_products/<group>.npz``; ``group`` is a sweep folder name or ``'real'``."""
    if not group or "/" in group or group.startswith("."):
        raise ValueError(f"a product group must be a plain folder name, got {group!r}")
    return Path(folder) / PRODUCTS_DIR / f"{group}.npz"


def write_sample_products(path: str | Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Write one group's arrays (``ids``, ``labels``, ``features``, ``logits``; ``probabilities`` is derived)."""
    missing = [k for k in ARRAYS[:4] if k not in arrays]
    if missing:
        raise ValueError(f"sample products need {list(ARRAYS[:4])}, missing {missing}")
    ids = np.asarray(arrays["ids"], dtype=np.int64)
    n = len(ids)
    features = np.asarray(arrays["features"], dtype=np.float32)
    logits = np.asarray(arrays["logits"], dtype=np.float32)
    if features.ndim != 2 or logits.ndim != 2 or len(features) != n or len(logits) != n or len(arrays["labels"]) != n:
        raise ValueError(f"sample products of {n} ids need features (N, D) and logits (N, K) of N = {n} rows, got "
                         f"{features.shape} and {logits.shape}")
    shifted = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    payload = {"ids": ids, "labels": np.asarray(arrays["labels"], dtype=np.int64), "features": features,
               "logits": logits, "probabilities": (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32),
               "meta": np.array(json.dumps(meta, sort_keys=True, default=str))}
    return atomic_write(path, lambda tmp: np.savez(tmp, **payload), suffix=".npz")


def read_sample_products(path: str | Path) -> dict:
    """``{'ids', 'labels', 'features', 'logits', 'probabilities': arrays, 'meta': dict}``; one line naming the file if
    it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sample products not found: {path} (the test stage writes them beside "
                                "metrics_table.json; re-run test)")
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in ARRAYS}
            out["meta"] = json.loads(str(z["meta"]))
    except Exception as err:  # noqa: BLE001 - any failure to read is one message naming the file
        raise ValueError(f"sample products {path} cannot be read ({type(err).__name__}: {str(err)[:120]}); re-run "
                         "test to rewrite them") from None
    return out
