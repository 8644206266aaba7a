"""The memorisation measure's file: each sample's distance to its nearest real training sample, per set of shards,
and the held-out real samples' (``NearestTrainingDistance`` writes it; the study reads it).

``nearest_training.npz``: ``folders`` (the shard folders, each named relative to the file's own folder:
``io.file_references``), per folder i ``ids_i``, ``labels_i`` and ``distance_i`` (sorted by sample id),
``held_out_labels`` / ``held_out_distance``, and ``space`` (JSON: where the distance was measured).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .file_references import reference_to, resolve_reference

NEAREST_FILE = "nearest_training.npz"


def write_nearest_training(path: str | Path, sets: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                           held_out: tuple[np.ndarray, np.ndarray], space) -> Path:
    """``sets``: folder -> (ids, labels, distances); ``held_out``: (labels, distances)."""
    arrays: dict[str, np.ndarray] = {"folders": np.array([reference_to(f, path) for f in sets]),
                                     "held_out_labels": np.asarray(held_out[0]),
                                     "held_out_distance": np.asarray(held_out[1]), "space": np.array(json.dumps(space))}
    for i, (ids, labels, distance) in enumerate(sets.values()):
        order = np.argsort(ids, kind="stable")
        arrays.update({f"ids_{i}": np.asarray(ids)[order], f"labels_{i}": np.asarray(labels)[order],
                       f"distance_{i}": np.asarray(distance)[order]})
    return atomic_write(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")


def read_nearest_training(path: str | Path) -> dict:
    """``{folder: {'ids', 'labels', 'distance'}, 'held_out': {'labels', 'distance'}, 'space': ...}``; each folder
    key is the resolved path (``str(Path(folder).resolve())``), wherever the run folder is now."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"nearest-training distances not found: {path} (the NearestTrainingDistance predict "
                                "step writes them)")
    with np.load(path, allow_pickle=False) as z:
        out = {str(resolve_reference(str(f), path)): {k: z[f"{k}_{i}"] for k in ("ids", "labels", "distance")}
               for i, f in enumerate(z["folders"])}
        out["held_out"] = {"labels": z["held_out_labels"], "distance": z["held_out_distance"]}
        out["space"] = json.loads(str(z["space"]))
    return out

