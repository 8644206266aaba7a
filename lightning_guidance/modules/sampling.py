"""``SamplingModule``: generate shards of samples from a trained diffusion checkpoint over a sweep, and grade them.

``predict`` walks the shards of every sweep value (sample ids ``0..N-1``, label ``classes[id % len(classes)]``, seed
``seed + id``: the same ids at every value, so a sample can be followed across the sweep) and writes each atomically
(:mod:`lightning_guidance.io.shards`); a shard already on disk with the same config hash is skipped, so a killed job
resumes where it was. Under DDP each rank takes whole shards (Lightning's unrepeated sampler for predict).
``shard_part: [i, k]`` keeps only the shards i, i + k, ... (task i of a k-task job array; a later run without it
skips them all and writes the manifest). ``save_trajectory: true`` also stores in each shard the path the sampler
took (``trajectory``: the state each step starts from, then the samples; :func:`~..io.shards.read_extra`).

``test`` grades the shards of every sweep value, images or toy points, against the real data of ``data:`` (its test
split) with a judge (:class:`~lightning_guidance.metrics.judge.Judge`): Fréchet distance in the judge's features
(``fd_name``, e.g. ``fd_digits``), the kernel distance in the same features (``kd_digits``), precision/recall, judge
accuracy and score, and Inception FID when
``inception_weights`` names a local file. Lightning's test loop iterates the real data (padded repeats dropped by
sample index); at the end of the epoch each rank reads its own block of sample ids from the shards, and the figures
are reduced across ranks. Rank 0 writes ``<output_dir>/metrics_table.{json,md}`` (one row per sweep value, a
reference row: the judge on the real data, and the real-vs-real floor), which the study report quotes, and beside it
``sample_products/<group>.npz``: what the judge saw of each sample, for bootstraps (``io.sample_products``); both go
to ``grade_dir`` instead when it is set (a second judge grading the same shards).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.rank_split import LoaderBatchIds, check_enough_per_rank, owned_block
from ..diffusion.cfg_rule import ClassifierFreeGuidance
from ..diffusion.sampling import check_sampling, sample_ids, seeds_for_ids
from ..guidance.sweep import Sweep
from ..guidance.trace import TrajectoryRecorder
from ..io.digests import file_identity
from ..io.shards import (Shard, check_shards, config_difference, config_hash, open_shard, plan_shards, shard_config,
                         shard_hash, write_manifest, write_shard)
from ..metrics.judge import check_judge
from ..metrics.sample_quality import SampleQuality, write_quality_table
from .cfg_diffusion import CFGDiffusion


def _first(items):
    return items[0]


def load_rule_guide(rule: ClassifierFreeGuidance | None, diffusion: CFGDiffusion) -> CFGDiffusion | None:
    """Check a CFG rule against the model's network; return autoguidance's worse model (frozen) or None."""
    if rule is None:
        return None
    if rule.perturbation is not None:
        from ..nets.attention_perturbation import PerturbedAttention

        PerturbedAttention.for_rule(diffusion.net, rule)  # refuses a net without those layers
    if not rule.guide_is_other_model:
        return None
    name = type(rule).__name__
    guide = CFGDiffusion.from_checkpoint(rule.guide_checkpoint, use_ema=rule.guide_use_ema).requires_grad_(False)
    ghp, hp = guide.hparams, diffusion.hparams
    if (guide.num_classes, guide.data_shape) != (diffusion.num_classes, diffusion.data_shape):
        raise ValueError(f"{name}: the guide {rule.guide_checkpoint} models {guide.num_classes} classes of shape "
                         f"{guide.data_shape}, the main model {diffusion.num_classes} of {diffusion.data_shape}; "
                         "train the worse model on the same data")
    if (ghp.schedule, ghp.num_train_steps) != (hp.schedule, hp.num_train_steps):
        raise ValueError(f"{name}: the guide {rule.guide_checkpoint} was trained on a {ghp.schedule}/"
                         f"{ghp.num_train_steps} schedule, the main model on {hp.schedule}/{hp.num_train_steps}: "
                         "its t means another noise level; retrain it to match")
    return guide


class SamplingModule(L.LightningModule):
    def __init__(self, checkpoint: str, output_dir: str | None = None, sampler: str = "ddim",
                 sampler_kwargs: dict | None = None, sweep: Sweep | None = None, classes: list[int] | None = None,
                 samples_per_class: int = 16, shard_size: int = 64, batch_size: int = 64, seed: int = 0,
                 use_ema: bool = True, net: nn.Module | None = None, grid_per_class: int = 10,
                 judge: nn.Module | None = None, fd_name: str = "fd_judge", precision_recall_k: int = 3,
                 inception_weights: str | None = None, overwrite: bool = False,
                 shard_part: tuple[int, int] | None = None, save_trajectory: bool = False,
                 grade_dir: str | None = None):
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
        hp = self.diffusion.hparams
        self.sweep.check_against(self.diffusion.num_classes, self.diffusion.data_shape, hp.schedule, hp.num_train_steps)
        # registered, so that the terms' classifiers move to the sampling device with this module (each once)
        self.term_classifiers = nn.ModuleList(self.sweep.classifiers).requires_grad_(False)
        self.guide_diffusion = load_rule_guide(self.sweep.cfg_rule, self.diffusion)
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
        """What a shard's config hash covers: the model file (by content digest), the sampler, the sweep at
        ``value`` (its guides' weights files by digest), the seeds."""
        hp, sweep = self.hparams, self.sweep.identity()
        return {"checkpoint": file_identity(hp.checkpoint), "use_ema": hp.use_ema,
                "sampler": hp.sampler, "sampler_kwargs": dict(self.sampler_kwargs), "scale": float(value),
                "scale_target": sweep["scale_target"], "cfg_scale": sweep["cfg_scale"], "seed": hp.seed,
                "guidance": sweep["guidance"], "classes": self.classes,
                **({"cfg_rule": sweep["cfg_rule"]} if "cfg_rule" in sweep else {}),
                # a batch-coupled term (tilted guidance) makes samples depend on who shares their batch
                "batch_size": hp.batch_size if self.sweep.couples_batch else None,
                **({"trajectory": True} if hp.get("save_trajectory") else {})}

    def folder(self, value: float) -> Path:
        return self.output_dir / self.sweep.folder(value)

    @property
    def grade_dir(self) -> Path:
        """Where ``test`` writes its table and per-sample products: ``grade_dir`` if given (a second judge grading the
        same shards), else ``output_dir``, beside the shards."""
        return Path(self.hparams.grade_dir) if self.hparams.get("grade_dir") else self.output_dir

    # ---- predict: the shards ---------------------------------------------------------------------------
    def predict_dataloader(self) -> DataLoader:
        plans = [(path, value, ids) for value in self.sweep.values
                 for path, ids in plan_shards(self.folder(value), self.num_samples, self.hparams.shard_size)]
        if self.hparams.get("shard_part") is not None:  # one task of a job array: every k-th shard from the i-th
            i, k = (int(v) for v in self.hparams.shard_part)
            plans = plans[i::k]
        return DataLoader(plans, batch_size=1, shuffle=False, collate_fn=_first)

    def sample(self, ids, value: float, batch_size: int | None = None, guidance=None,
               record: TrajectoryRecorder | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples and labels of sample ids ``ids`` at one sweep value (``guidance``: other terms, e.g. traced;
        ``record``: keeps the sampler's path)."""
        cfg, terms = self.sweep.at(value)
        return sample_ids(self.diffusion, ids, self.classes, self.hparams.seed, sampler=self.hparams.sampler,
                          sampler_kwargs=self.sampler_kwargs, cfg_scale=cfg,
                          guidance=[*(terms if guidance is None else guidance), *([record] if record else [])],
                          batch_size=batch_size or self.hparams.batch_size, cfg_rule=self.sweep.cfg_rule,
                          guide=self.guide_diffusion)

    def predict_step(self, plan, batch_idx: int = 0):
        path, value, ids = plan
        config = self.shard_config(value)
        expected = config_hash(config)
        found = shard_hash(path) if path.exists() else None
        if found == expected:
            return {"path": str(path), "skipped": True}
        if path.exists() and not self.hparams.overwrite:
            if found is None:
                open_shard(path)  # raises the one-line message naming the damaged file
            raise ValueError(f"stale shard {path}: made with another sampling config "
                             f"({config_difference(shard_config(path), config)}); re-run with "
                             "--model.init_args.overwrite true to regenerate it, or choose another output_dir")
        recorder = TrajectoryRecorder() if self.hparams.get("save_trajectory") else None
        x, labels = self.sample(list(ids), value, record=recorder)
        write_shard(path, Shard(x, labels, seeds_for_ids(ids, self.hparams.seed), torch.tensor(ids), value, expected,
                                config), {"trajectory": recorder.path(x).numpy()} if recorder else None)
        return {"path": str(path), "skipped": False}

    def on_predict_epoch_end(self) -> None:
        if self.trainer.world_size > 1:
            self.trainer.strategy.barrier("shards-written")
        if self.trainer.is_global_zero:
            values = self.sweep.values
            write_manifest(self.output_dir, {f"{v:g}": self.folder(v) for v in values},
                           {f"{v:g}": self.shard_config(v) for v in values}, self.num_samples, self.classes,
                           f"{self.sweep.target} scale", self.hparams.grid_per_class)

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
        ids, keep = self._batch_ids(self.trainer, batch_idx, len(y), dataloader_idx)
        ids, keep = ids.to(y.device), keep.to(y.device)
        if keep.any():
            self.quality.update_real(x[keep], y[keep], ids[keep])

    def on_test_epoch_end(self) -> None:
        rows, counts = {}, {}
        for value in self.sweep.values:  # the same order on every rank: compute is collective
            group = self.sweep.folder(value)
            owned = owned_block(self.num_samples, self.global_rank, self.trainer.world_size)
            self.quality.update_from_shards(group, self._shards[value], owned, self.hparams.batch_size, self.device)
            rows[group], counts[group] = self.quality.compute(group), self.quality.num_samples(group)
        real, counts["real"] = self.quality.compute_real(), self.quality.num_samples()
        floor = self.quality.real_floor(self.num_samples)  # collective, like the per-sample files below
        self.quality.write_products(self.grade_dir, write=self.trainer.is_global_zero)
        for group, row in rows.items():
            self.log_dict({f"test/{group}/{k}": v for k, v in row.items()}, sync_dist=True)  # equal on all ranks
        self.log_dict({f"test/real/{k}": v for k, v in real.items()}, sync_dist=True)
        if self.trainer.is_global_zero:
            self.write_metrics_table(rows, real, counts, floor)

    def write_metrics_table(self, rows: dict[str, dict[str, float]], real: dict[str, float],
                            counts: dict[str, int], real_floor: dict | None = None) -> tuple[Path, Path]:
        hp, sweep = self.hparams, self.sweep
        table = [{"scale": v, "guidance": f"{hp.sampler} {dict(self.sampler_kwargs)}, " + sweep.describe(v),
                  "num_samples": counts[sweep.folder(v)], "metrics": rows[sweep.folder(v)]} for v in sweep.values]
        return write_quality_table(self.grade_dir, self.judge, type(self.trainer.datamodule).__name__, hp.fd_name,
                                   self.num_samples, sweep.target, table, real, counts["real"], real_floor,
                                   self.quality.settings())
