"""Sample shards: one ``.npz`` per block of sample ids at one guidance setting, written atomically.

Keys: ``images`` (uint8, N×C×H×W) for image data or ``points`` (float32, N×D) for toy data, ``labels``,
``seeds``, ``sample_ids`` (int64), ``scale`` (float), ``config_hash`` (str), ``data_shape`` (int array).
Images are mapped from [-1, 1] to uint8 only here, at the file boundary.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .atomic import atomic_write


def config_hash(config: dict) -> str:
    """Short stable hash of a JSON-able config (sorted keys)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def to_uint8(images: Tensor) -> np.ndarray:
    """[-1, 1] float → uint8, rounding to nearest (values outside are clipped)."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def from_uint8(images: np.ndarray) -> Tensor:
    return torch.from_numpy(np.asarray(images)).float() / 127.5 - 1


@dataclass
class Shard:
    samples: Tensor  # float in data space ([-1, 1] for images)
    labels: Tensor
    seeds: Tensor
    sample_ids: Tensor
    scale: float
    config_hash: str


def write_shard(path: str | Path, shard: Shard) -> Path:
    is_image = shard.samples.ndim == 4
    payload = dict(
        labels=shard.labels.cpu().numpy().astype(np.int64),
        seeds=shard.seeds.cpu().numpy().astype(np.int64),
        sample_ids=shard.sample_ids.cpu().numpy().astype(np.int64),
        scale=np.float64(shard.scale),
        config_hash=np.array(shard.config_hash),
        data_shape=np.array(shard.samples.shape[1:], dtype=np.int64),
    )
    if is_image:
        payload["images"] = to_uint8(shard.samples)
    else:
        payload["points"] = shard.samples.detach().float().cpu().numpy()
    return atomic_write(path, lambda tmp: np.savez(tmp, **payload), suffix=".npz")


def read_shard(path: str | Path) -> Shard:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"sample shard not found: {path}")
    with np.load(path) as z:
        samples = from_uint8(z["images"]) if "images" in z else torch.from_numpy(z["points"])
        return Shard(samples=samples, labels=torch.from_numpy(z["labels"]), seeds=torch.from_numpy(z["seeds"]),
                     sample_ids=torch.from_numpy(z["sample_ids"]), scale=float(z["scale"]),
                     config_hash=str(z["config_hash"]))


def shard_hash(path: str | Path) -> str | None:
    """The config hash a finished shard was written with, or None if the file is unreadable (e.g. truncated)."""
    try:
        with np.load(path) as z:
            return str(z["config_hash"])
    except Exception:  # noqa: BLE001 - any unreadable file counts as unfinished
        return None
