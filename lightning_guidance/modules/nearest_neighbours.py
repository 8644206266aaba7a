"""The controls of the nearest-neighbour post-processor (``RectifiedFlowPostprocessor``), as ``predict`` steps on the
flow's data module (``GeneratedShardsDataModule``: its ``real`` data and the shard folders of ``predict_shards``).

- :class:`NearestNeighbourCopy`: every generated sample replaced by its nearest real training sample (exact faiss
  search, L2 in pixels or in ``feature_net``'s features; ``same_class`` as the flow's): what a post-processor that
  only memorised would output. Its shards are written like the flow's (``<output_dir>/<source folder>/<shard>``, same
  ids, labels, seeds and swept value, ``source_value``, ``source_config_hash``), so ``SamplingModule``'s ``test`` grades them as their source.
- :class:`NearestTrainingDistance`: the memorisation measure: each sample's L2 distance to its nearest real training
  sample (any class), for every folder of ``predict_shards``, and the same for the held-out real samples (the split
  the judge grades against: ``real``'s test split, else its validation split); ``<output_dir>/nearest_training.npz``
  (``io.nearest_training``). A set that copies training samples sits at 0; one as far from them as new real samples
  has the held-out distances' distribution.

One process (a search, not a training).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from ..data.generated import tensors_of
from ..flow.cache import array_digest
from ..flow.neighbours import top_k_neighbours
from ..flow.search_space import SearchSpace
from ..io.atomic import atomic_write_text
from ..io.digests import file_digest
from ..io.nearest_training import NEAREST_FILE, write_nearest_training
from ..io.file_references import reference_to
from ..io.shards import Shard, config_hash, read_shard, shard_hash, write_shard

COPY_SUMMARY = "copy_summary.json"


class _NearestReal(L.LightningModule):
    """Shared: the real training and held-out sets, the search space; each predict item is one shard file."""

    def __init__(self, output_dir: str, feature_net: nn.Module | None = None, feature_batch_size: int = 512):
        super().__init__()
        self.output_dir, self.search_space = Path(output_dir), SearchSpace(feature_net, feature_batch_size)
        self.real: dict[str, Tensor] = {}

    def setup(self, stage: str) -> None:
        if self.trainer.world_size > 1:
            raise ValueError(f"{type(self).__name__} is a search on one process: run it with devices: 1")
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "real") or not getattr(dm, "predict_shards", None):
            raise ValueError(f"{type(self).__name__} reads the flow's data module: data: {{class_path: "
                             "lightning_guidance.data.generated.GeneratedShardsDataModule, init_args: {shards: [], "
                             "real: ..., predict_shards: [...]}}")
        dm.real.setup("fit")
        real = dm.real
        held_out = real.test_set if real.test_set is not None else real.val_set
        (x, y), (hx, hy) = tensors_of(real.train_set), tensors_of(held_out)
        self.real = {"x": x.float(), "y": y.long(), "held_out_x": hx.float(), "held_out_y": hy.long()}

    def nearest(self, x: Tensor, labels: np.ndarray | None = None, same_class: bool = False):
        """``(L2 distance, index into the real training set)`` of each row's nearest real training sample."""
        d, i = top_k_neighbours(self.search_space.rows(x, self.device),
                                self.search_space.rows(self.real["x"], self.device), 1, query_labels=labels,
                                real_labels=self.real["y"].numpy(), same_class=same_class)
        return np.sqrt(np.maximum(d[:, 0], 0)), i[:, 0]


class NearestNeighbourCopy(_NearestReal):
    """Each sample replaced by its nearest real training sample (the copy-the-neighbour baseline).

    Args:
        output_dir: where the copied shards go (``<output_dir>/<source folder>/<shard>``).
        same_class: search only the real samples of the sample's own class (as the flow's neighbours).
        feature_net: the network whose flattened output is the search space (null: the pixels).
        feature_batch_size: rows per ``feature_net`` call (>= 1).
    """

    def __init__(self, output_dir: str, same_class: bool = True, feature_net: nn.Module | None = None,
                 feature_batch_size: int = 512):
        super().__init__(output_dir, feature_net, feature_batch_size)
        self.same_class = bool(same_class)

    def predict_step(self, source_path: str, batch_idx: int = 0):
        source, path = read_shard(source_path), Path(source_path)
        target = self.output_dir / path.parent.name / path.name
        expected = config_hash({"copy": "nearest real training sample", "space": self.search_space.describe(),
                                "same_class": self.same_class, "real": array_digest(self.real["x"], self.real["y"]),
                                "source_config_hash": source.config_hash, "source_digest": file_digest(path, digits=64)})
        if target.exists() and shard_hash(target) == expected:
            return {"path": str(target), "skipped": True}
        distance, index = self.nearest(source.samples.float(), source.labels.numpy(), self.same_class)
        extra = {"source_config_hash": source.config_hash, "source_value": np.float64(source.value),
                 "source_file": reference_to(path, target), "displacement": distance.astype(np.float32),
                 "nearest_index": index,
                 "postprocessed": True}
        write_shard(target, Shard(self.real["x"][index], source.labels, source.seeds, source.sample_ids, source.value,
                                  expected), extra)
        return {"path": str(target), "skipped": False}

    def on_predict_epoch_end(self) -> None:
        folders = {}
        for folder in sorted(p for p in self.output_dir.iterdir() if p.is_dir()):
            moves = np.concatenate([np.load(p)["displacement"] for p in sorted(folder.glob("shard_*.npz"))])
            folders[folder.name] = {"samples": int(len(moves)), "move_mean": float(moves.mean()),
                                    "move_median": float(np.median(moves))}
        atomic_write_text(self.output_dir / COPY_SUMMARY, json.dumps({"same_class": self.same_class,
                                                                      "folders": folders}, indent=2))


class NearestTrainingDistance(_NearestReal):
    """Each sample's distance to its nearest real training sample (any class), per folder of ``predict_shards``, and
    the held-out real samples': ``<output_dir>/nearest_training.npz``.

    Args:
        output_dir: where ``nearest_training.npz`` goes.
        feature_net: the network whose flattened output is the search space (null: the pixels).
        feature_batch_size: rows per ``feature_net`` call (>= 1).
    """

    def __init__(self, output_dir: str, feature_net: nn.Module | None = None, feature_batch_size: int = 512):
        super().__init__(output_dir, feature_net, feature_batch_size)
        self.found: dict[str, list] = {}

    def on_predict_epoch_start(self) -> None:
        self.found = {}

    def predict_step(self, source_path: str, batch_idx: int = 0):
        shard = read_shard(source_path)
        distance, _ = self.nearest(shard.samples.float())
        self.found.setdefault(str(Path(source_path).parent), []).append(
            (shard.sample_ids.numpy(), shard.labels.numpy(), distance))
        return {"path": str(source_path)}

    def on_predict_epoch_end(self) -> None:
        sets = {folder: tuple(np.concatenate(a) for a in zip(*self.found[str(Path(folder))]))
                for folder in self.trainer.datamodule.predict_shards}
        held_out, _ = self.nearest(self.real["held_out_x"])
        write_nearest_training(self.output_dir / NEAREST_FILE, sets, (self.real["held_out_y"].numpy(), held_out),
                               self.search_space.describe())
