"""A top-k neighbour table stored once per set of inputs, named and checked by the content digest of those inputs.

The digest covers everything that changes the table: the generated samples, the real set, the feature space (its
weights), k, same-class search and the index settings. A table is stored atomically as
``<folder>/topk_<digest[:20]>.npz`` holding the full digest and the description it was made from; a file whose
recorded digest is not the one asked for (copied, renamed, from other inputs) is never used: it is moved aside
(``.mismatch``, nothing deleted) and the table rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_write


def array_digest(*arrays) -> str:
    """sha256 over the dtype, shape and bytes of each array (numpy or torch)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def json_digest(description: dict) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


class NeighbourCache:
    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def path(self, digest: str) -> Path:
        return self.folder / f"topk_{digest[:20]}.npz"

    def load(self, digest: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The stored ``(distances, indices)`` for ``digest``, or None (absent, unreadable, or from other inputs)."""
        path = self.path(digest)
        if not path.exists():
            return None
        try:
            with np.load(path) as z:
                found = str(z["inputs_digest"])
                distances, indices = z["distances"], z["indices"]
        except Exception:  # noqa: BLE001 - an unreadable cache is rebuilt
            found, distances, indices = "unreadable", None, None
        if found == digest:
            return distances, indices
        aside = path.with_name(path.name + f".mismatch-{found[:12]}")
        warnings.warn(f"neighbour cache {path} was computed from other inputs (digest {found[:12]}, these inputs "
                      f"give {digest[:12]}): not used, moved to {aside.name}, rebuilding", stacklevel=2)
        os.replace(path, aside)
        return None

    def store(self, digest: str, description: dict, distances: np.ndarray, indices: np.ndarray) -> Path:
        payload = dict(inputs_digest=np.array(digest), inputs=np.array(json.dumps(description, sort_keys=True)),
                       distances=np.asarray(distances, np.float32), indices=np.asarray(indices, np.int64))
        return atomic_write(self.path(digest), lambda tmp: np.savez(tmp, **payload), suffix=".npz")

    def load_or_build(self, digest: str, description: dict,
                      build: Callable[[], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, bool]:
        """``(distances, indices, reused)``."""
        found = self.load(digest)
        if found is not None:
            return found[0], found[1], True
        distances, indices = build()
        self.store(digest, description, distances, indices)
        return distances, indices, False
