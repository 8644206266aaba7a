"""``SamplingModule``: generate shards of samples from a trained diffusion checkpoint over a sweep, and grade them.

``predict`` walks the shards of every sweep value (sample ids ``0..N-1``, label ``classes[id % len(classes)]``, seed
``seed + id``: the same ids at every value, so a sample can be followed across the sweep) and writes each atomically
(:mod:`lightning_guidance.io.shards`); a shard already on disk with the same config hash and the same sample ids
is skipped, so a killed job resumes where it was, and one of another config is refused as stale (what enters a shard's
config is listed in tests/test_shard_identity.py). Under DDP each rank takes whole shards (Lightning's unrepeated
sampler for predict).
``shard_part: [i, k]`` keeps only the shards i, i + k, ... (task i of a k-task job array; a later run without it
skips them all and writes the manifest).

``test`` grades the shards of every sweep value, images or toy points, against the real data of ``data:`` (its test
split) with a judge (:class:`~lightning_guidance.metrics.judge.Judge`): Fréchet distance in the judge's features
(``fd_name``, e.g. ``fd_digits``), precision/recall, judge accuracy and score, and Inception FID when
``inception_weights`` names a local file. Lightning's test loop iterates the real data (padded repeats dropped by
sample index); at the end of the epoch each rank reads its own block of sample ids from the shards, and the figures
are reduced across ranks. Rank 0 writes ``<output_dir>/metrics_table.{json,md}`` (one row per sweep value and a
reference row: the judge on the real data), which the study report quotes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.rank_split import LoaderBatchIds, check_enough_per_rank, owned_block
from ..diffusion.sampling import check_sampling, sample_ids, sampler_options, seeds_for_ids
from ..guidance.sweep import Sweep, describe_network
from ..io.digests import file_identity
from ..io.shards import (Shard, check_shards, config_difference, config_hash, finished_shard, open_shard, plan_shards,
                         shard_config, write_manifest, write_shard)
from ..metrics.judge import check_judge
from ..metrics.sample_quality import SampleQuality, write_quality_table
from .cfg_diffusion import CFGDiffusion


def _first(items):
    return items[0]


class SamplingModule(L.LightningModule):
    def __init__(self, checkpoint: str, output_dir: str | None = None, sampler: str = "ddim",
                 sampler_kwargs: dict | None = None, sweep: Sweep | None = None, classes: list[int] | None = None,
                 samples_per_class: int = 16, shard_size: int = 64, batch_size: int = 64, seed: int = 0,
                 use_ema: bool = True, net: nn.Module | None = None, grid_per_class: int = 10,
                 judge: nn.Module | None = None, fd_name: str = "fd_judge", precision_recall_k: int = 3,
                 inception_weights: str | None = None, overwrite: bool = False,
                 shard_part: tuple[int, int] | None = None):
        super().__init__()
        if shard_part is not None and not (len(shard_part) == 2 and 0 <= int(shard_part[0]) < int(shard_part[1])):
            raise ValueError(f"shard_part must be [i, k] with 0 <= i < k (this job samples shards i, i + k, ...), "
                             f"got {shard_part}")
        for name, v in (("samples_per_class", samples_per_class), ("shard_size", shard_size), ("batch_size", batch_size)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.sweep = sweep if sweep is not None else Sweep()
        self.sampler_kwargs = check_sampling(sampler, sampler_kwargs, self.sweep.terms)
        self.save_hyperparameters(ignore=["net", "sweep", "judge"])
        self.diffusion = CFGDiffusion.from_checkpoint(checkpoint, net=net, use_ema=use_ema).requires_grad_(False)
        # a net given here replaces the one the checkpoint records: its structure enters the shards' identity
        self._net_identity = None if net is None else describe_network(net)
        hp = self.diffusion.hparams
        self.sweep.check_against(self.diffusion.num_classes, self.diffusion.data_shape, hp.schedule, hp.num_train_steps)
        # registered, so that the terms' classifiers move to the sampling device with this module (each once)
        self.term_classifiers = nn.ModuleList(self.sweep.classifiers).requires_grad_(False)
        self.weak_model = self.diffusion.weak_model(self.sweep.cfg_rule)
        # autoguidance's worse network, registered likewise (a perturbed-attention view is of the main net)
        self.weak_net = self.weak_model.net if isinstance(getattr(self.weak_model, "net", None), nn.Module) else None
        k = self.diffusion.num_classes
        self.classes = list(range(k)) if classes is None else [int(c) for c in classes]
        bad = [c for c in self.classes if not 0 <= c < k]
        if bad:
            raise ValueError(f"classes {bad} out of range: the checkpoint's model knows classes 0..{k - 1}")
        self.num_samples = samples_per_class * len(self.classes)
        self.judge = judge
        self.quality: SampleQuality | None = None
        self._shards: dict[float, list[tuple[Path, np.ndarray]]] = {}
        self._batch_ids = LoaderBatchIds()

    @property
    def output_dir(self) -> Path:
        """``output_dir`` if given, else the trainer's ``default_root_dir`` (the one knob that places a run)."""
        if self.hparams.output_dir:
            return Path(self.hparams.output_dir)
        if self._trainer is not None and self.trainer.default_root_dir:
            return Path(self.trainer.default_root_dir)
        raise ValueError("SamplingModule needs output_dir, or a trainer whose default_root_dir places the shards")

    def shard_config(self, value: float) -> dict:
        """What a shard's config hash covers: the model file (by content digest) and its weights (EMA or raw), the
        sampler, the sweep at ``value`` (its guides' weights files by digest), the classes and seeds, and the batch
        size where a batch-coupled term makes samples depend on who shares their batch. Every other argument is
        result-neutral (tests/test_shard_identity.py holds the list)."""
        hp = self.hparams
        return {"checkpoint": file_identity(hp.checkpoint), "use_ema": hp.use_ema, "sampler": hp.sampler,
                "sampler_kwargs": {**sampler_options(hp.sampler), **self.sampler_kwargs}, "seed": hp.seed,
                "classes": self.classes, **self.sweep.identity(value),
                **({"net": self._net_identity} if self._net_identity is not None else {}),
                **({"batch_size": hp.batch_size} if self.sweep.couples_batch else {})}

    def folder(self, value: float) -> Path:
        return self.output_dir / self.sweep.folder(value)

    # ---- predict: the shards ---------------------------------------------------------------------------
    def predict_dataloader(self) -> DataLoader:
        plans = [(path, value, ids) for value in self.sweep.values
                 for path, ids in plan_shards(self.folder(value), self.num_samples, self.hparams.shard_size)]
        if self.hparams.get("shard_part") is not None:  # one task of a job array: every k-th shard from the i-th
            i, k = (int(v) for v in self.hparams.shard_part)
            plans = plans[i::k]
        return DataLoader(plans, batch_size=1, shuffle=False, collate_fn=_first)

    def sample(self, ids, value: float, batch_size: int | None = None,
               terms: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples and labels of sample ids ``ids`` at one swept value (``terms``: others, e.g. traced)."""
        setting = self.sweep.at(value, self.weak_model)
        if terms is not None:
            setting = dataclasses.replace(setting, terms=terms)
        return sample_ids(self.diffusion, ids, self.classes, self.hparams.seed, sampler=self.hparams.sampler,
                          sampler_kwargs=self.sampler_kwargs, setting=setting,
                          batch_size=batch_size or self.hparams.batch_size)

    def predict_step(self, plan, batch_idx: int = 0):
        path, value, ids = plan
        config = self.shard_config(value)
        expected = config_hash(config)
        found = finished_shard(path) if path.exists() else None
        if found == (expected, tuple(ids)):  # this config's samples of exactly these ids
            return {"path": str(path), "skipped": True}
        if path.exists() and not self.hparams.overwrite:
            if found is None:
                open_shard(path)  # raises the one-line message naming the damaged file
            why = (config_difference(shard_config(path), config) if found[0] != expected else
                   f"it holds sample ids {found[1][0]}..{found[1][-1]}, this run's shard {ids[0]}..{ids[-1]}: "
                   "samples_per_class, classes or shard_size changed")
            raise ValueError(f"stale shard {path}: made with another sampling config ({why}); re-run with "
                             "--model.init_args.overwrite true to regenerate it, or choose another output_dir")
        x, labels = self.sample(list(ids), value)
        write_shard(path, Shard(x, labels, seeds_for_ids(ids, self.hparams.seed), torch.tensor(ids), value, expected,
                                config))
        return {"path": str(path), "skipped": False}

    def on_predict_epoch_end(self) -> None:
        if self.trainer.world_size > 1:
            self.trainer.strategy.barrier("shards-written")
        if self.trainer.is_global_zero:
            values = self.sweep.values
            write_manifest(self.output_dir, {f"{v:g}": self.folder(v) for v in values},
                           {f"{v:g}": self.shard_config(v) for v in values}, self.num_samples, self.classes,
                           {f"{v:g}": self.sweep.describe(v) for v in values}, self.hparams.grid_per_class)

    # ---- test: the shards graded against real data by a judge -------------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "test":
            return
        hp, dm = self.hparams, self.trainer.datamodule
        if self.judge is None:
            raise ValueError("SamplingModule test grades samples with a judge classifier: add judge: {class_path: "
                             "lightning_guidance.metrics.judge.Judge, init_args: {checkpoint: <a clean classifier "
                             "trained with e.g. configs/digits/judge.yaml>}} (see configs/digits/grade_with_judge.yaml)")
        if dm is None:
            raise ValueError("SamplingModule test compares the shards with real data: give the dataset the diffusion "
                             "model was trained on as data: (e.g. lightning_guidance.data.digits.DigitsDataModule)")
        check_judge(self.judge, getattr(dm, "num_classes", self.diffusion.num_classes), self.diffusion.num_classes,
                    self.sweep.terms)
        check_enough_per_rank(self.num_samples, self.trainer.world_size, f"SamplingModule test of {self.output_dir}")
        need = max(2, hp.precision_recall_k + 1)
        if self.num_samples < need:
            raise ValueError(f"{self.num_samples} samples per scale are too few: precision/recall with "
                             f"k={hp.precision_recall_k} and the Fréchet distance need at least {need}; "
                             "raise samples_per_class")
        self._real_shape = tuple(getattr(dm, "data_shape", ()) or ()) or self.diffusion.data_shape
        self.quality = SampleQuality(self.judge, [self.sweep.folder(v) for v in self.sweep.values], hp.fd_name,
                                     hp.precision_recall_k, inception_weights=hp.inception_weights)
        self._shards = {v: check_shards(self.folder(v), config_hash(self.shard_config(v)), self.num_samples,
                                        self._real_shape, self.judge.num_classes, type(dm).__name__,
                                        self.shard_config(v))
                        for v in self.sweep.values}

    def on_test_epoch_start(self) -> None:
        self._batch_ids.reset()
        self.quality.reset()

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        x, y = batch[0], batch[1]
        if tuple(x.shape[1:]) != tuple(self._real_shape):
            raise ValueError(f"real batch of shape {tuple(x.shape[1:])}, shards of shape {tuple(self._real_shape)}: "
                             "the data module does not match the shards")
        _, keep = self._batch_ids(self.trainer, batch_idx, len(y), dataloader_idx)
        keep = keep.to(y.device)
        if keep.any():
            self.quality.update_real(x[keep], y[keep])

    def on_test_epoch_end(self) -> None:
        rows, counts = {}, {}
        for value in self.sweep.values:  # the same order on every rank: compute is collective
            group = self.sweep.folder(value)
            owned = owned_block(self.num_samples, self.global_rank, self.trainer.world_size)
            self.quality.update_from_shards(group, self._shards[value], owned, self.hparams.batch_size, self.device)
            rows[group], counts[group] = self.quality.compute(group), self.quality.num_samples(group)
        real, counts["real"] = self.quality.compute_real(), self.quality.num_samples()
        for group, row in rows.items():
            self.log_dict({f"test/{group}/{k}": v for k, v in row.items()}, sync_dist=True)  # equal on all ranks
        self.log_dict({f"test/real/{k}": v for k, v in real.items()}, sync_dist=True)
        if self.trainer.is_global_zero:
            self.write_metrics_table(rows, real, counts)

    def write_metrics_table(self, rows: dict[str, dict[str, float]], real: dict[str, float],
                            counts: dict[str, int]) -> tuple[Path, Path]:
        hp, sweep = self.hparams, self.sweep
        table = [{"value": v, "guidance": f"{hp.sampler} {dict(self.sampler_kwargs)}, " + sweep.describe(v),
                  "num_samples": counts[sweep.folder(v)], "metrics": rows[sweep.folder(v)]} for v in sweep.values]
        return write_quality_table(self.output_dir, self.judge, type(self.trainer.datamodule).__name__, hp.fd_name,
                                   self.num_samples, sweep.target, sweep.axis, table, real, counts["real"])
