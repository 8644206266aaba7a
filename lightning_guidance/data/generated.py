"""Generated sample shards next to the real data they should be moved toward: the training data of the
rectified-flow post-processor (``RectifiedFlowPostprocessor``).

``shards`` lists folders of ``shard_*.npz`` (one swept value each, as ``SamplingModule.predict`` writes them) or
single shard files (empty for a predict-only use, which gives ``predict_shards``). Several values make the
one-for-all-scales training set of Zhao & Schwing 2025 (App. B): an equal mix, each value the same number of samples.
The train loader yields ``(x0, label, row)`` batches of generated samples (``row`` indexes :attr:`generated`),
shuffled by ``EpochShuffleSampler`` (exact resume, split under DDP). The real set is the training split of ``real``
(any ``LabeledDataModule``). The predict loader yields the shard files of ``predict_shards`` (folders or files, any
guidance and swept value), one path per item: the post-processor writes one output shard per input shard (under DDP
each rank takes whole shards).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from ..flow.cache import array_digest
from ..io.digests import file_digest
from ..io.shards import read_shard
from .base import InMemoryDataset, LabeledDataModule


@dataclass
class GeneratedSet:
    samples: Tensor  # (N, *data_shape) float, [-1, 1] for images
    labels: Tensor  # (N,) int64
    seeds: Tensor  # (N,) int64, the sampling seed of each sample
    values: Tensor  # (N,) float64, the swept value it was sampled at
    files: list[str]  # the shard files, in order
    file_digests: list[str]  # sha256 of each shard file


def shard_files(entries: list[str]) -> list[Path]:
    """The shard files of folders (``shard_*.npz`` inside, sorted) or of files given directly."""
    files = []
    for entry in entries:
        p = Path(entry)
        if p.is_dir():
            found = sorted(p.glob("shard_*.npz"))
            if not found:
                raise FileNotFoundError(f"no sample shards (shard_*.npz) in {p}: sample them first with "
                                        "python cli.py predict --config <a sampling config>")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"sample shards not found: {p} (a folder of shard_*.npz or one shard file; "
                                    "sample them first with python cli.py predict --config <a sampling config>)")
    return files


def read_generated(entries: list[str]) -> GeneratedSet:
    files = shard_files(entries)
    shards = [read_shard(f) for f in files]
    shapes = {tuple(s.samples.shape[1:]) for s in shards}
    if len(shapes) > 1:
        raise ValueError(f"the shards {', '.join(map(str, entries))} hold samples of different shapes {sorted(shapes)}")
    return GeneratedSet(samples=torch.cat([s.samples.float() for s in shards]),
                        labels=torch.cat([s.labels.long() for s in shards]),
                        seeds=torch.cat([s.seeds.long() for s in shards]),
                        values=torch.cat([torch.full((len(s.labels),), s.value, dtype=torch.float64) for s in shards]),
                        files=[str(f) for f in files], file_digests=[file_digest(f, digits=64) for f in files])


def tensors_of(dataset) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of a whole dataset: the tensors of an in-memory one, else read once through a loader."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0], dataset.tensors[1]
    xs, ys = zip(*((x, y) for x, y in DataLoader(dataset, batch_size=256)))
    return torch.cat(xs), torch.cat(ys)


def check_shards_against_real(generated: GeneratedSet, data_shape: tuple[int, ...], num_classes: int,
                              real_name: str) -> None:
    shape = tuple(generated.samples.shape[1:])
    if shape != tuple(data_shape):
        raise ValueError(f"the shards ({generated.files[0]}, ...) hold samples of shape {shape} but the real data "
                         f"({real_name}) has shape {tuple(data_shape)}: give the real data the shards were "
                         "generated for")
    bad = generated.labels[(generated.labels < 0) | (generated.labels >= num_classes)]
    if len(bad):
        raise ValueError(f"the shards ({generated.files[0]}, ...) hold labels {sorted(set(bad.tolist()))[:5]} outside "
                         f"the {num_classes} classes of the real data ({real_name}): they were generated for another "
                         "dataset")


class GeneratedShardsDataModule(LabeledDataModule):
    """Generated sample shards beside the real data they are moved toward (the post-processor's training data).

    Args:
        shards: folders of ``shard_*.npz`` (one sweep value each, as ``predict`` writes them) or shard files.
        real: the real data (a data module of this suite, e.g. ``DigitsDataModule``); its training split is used.
        batch_size: generated samples per batch and process (>= 1).
        seed: seed of the training order.
        num_workers: DataLoader worker processes (0: load in the main process).
        equal_mix: every sweep value must hold the same number of samples (an equal mix of scales).
        predict_shards: for ``predict``: the folders or files of shards to post-process.
    """

    def __init__(self, shards: list[str], real: LabeledDataModule, batch_size: int = 128, seed: int = 0,
                 num_workers: int = 0, equal_mix: bool = True, predict_shards: list[str] | None = None):
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        if not shards and not predict_shards:
            raise ValueError("shards must list at least one folder of sample shards")
        self.shards = [str(s) for s in shards]
        self.real = real
        self.equal_mix = bool(equal_mix)
        self.predict_shards = [str(s) for s in predict_shards or []]
        self.num_classes = real.num_classes
        self.data_shape = tuple(real.data_shape)
        self.generated: GeneratedSet | None = None
        self.real_x: Tensor | None = None
        self.real_y: Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.generated is not None or stage not in (None, "fit"):  # predict reads its own shards
            return
        if not self.shards:
            raise ValueError("shards must list at least one folder of sample shards to train on")
        self.real.setup("fit")
        self.real_x, self.real_y = tensors_of(self.real.train_set)
        generated = read_generated(self.shards)
        check_shards_against_real(generated, self.data_shape, self.num_classes, type(self.real).__name__)
        if self.equal_mix:
            values, counts = generated.values.unique(return_counts=True)
            if len(set(counts.tolist())) > 1:
                detail = ", ".join(f"{v:g}: {c}" for v, c in zip(values.tolist(), counts.tolist()))
                raise ValueError(f"equal_mix: the shards hold different numbers of samples per swept value ({detail});"
                                 " sample the same samples_per_class at every value, or set equal_mix: false")
        self.generated = generated
        rows = torch.arange(len(generated.labels))
        self.train_set = InMemoryDataset(generated.samples, generated.labels, rows)

    def real_digest(self) -> str:
        return array_digest(self.real_x, self.real_y)

    def predict_dataloader(self) -> DataLoader:
        if not self.predict_shards:
            raise ValueError("predict_shards must list the folders of sample shards to post-process (e.g. "
                             "--data.init_args.predict_shards '[runs/digits/samples_cfg_unseen/cfg_2.25]')")
        files = [str(f) for f in shard_files(self.predict_shards)]
        return DataLoader(files, batch_size=1, shuffle=False, collate_fn=_first)


def _first(items):
    return items[0]
