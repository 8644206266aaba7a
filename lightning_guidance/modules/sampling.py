"""``SamplingModule``: generate shards of samples from a trained diffusion checkpoint over a sweep, and grade them.

``checkpoint`` is a suite checkpoint file or a diffusers model folder (``save_pretrained`` layout, with the
``pretrained`` options of :mod:`.pretrained_diffusion`); a latent model's shards hold the decoded images.

``predict`` walks the shards of every sweep value (sample ids ``0..N-1``, label ``classes[id % len(classes)]``, seed
``seed + id``: the same ids at every value, so a sample can be followed across the sweep) and writes each atomically
(:mod:`lightning_guidance.io.shards`); a shard already on disk with the same config hash and the same sample ids
is skipped, so a killed job resumes where it was, and one of another config is refused as stale (what enters a shard's
config is listed in tests/test_shard_identity.py). Under DDP each rank takes whole shards (Lightning's unrepeated
sampler for predict).
``shard_part: [i, k]`` keeps only the shards i, i + k, ... (task i of a k-task job array; a later run without it
skips them all and writes the manifest). ``save_trajectory: true`` also stores in each shard the path the sampler
took (``trajectory``: the state each step starts from, then the samples; :func:`~..io.shards.read_extra`).

``test`` grades the shards of every sweep value, images or toy points, against the real data of ``data:`` (its test
split) with a judge (:class:`~lightning_guidance.metrics.judge.Judge`): Fréchet distance in the judge's features
(``fd_name``, e.g. ``fd_digits``), the kernel distance in the same features (``kd_digits``), precision/recall, judge
accuracy and score, and Inception FID when ``inception_weights`` names a local file (against
``inception_reference``, a file of reference statistics, when given) (:class:`~lightning_guidance.modules.grading.
JudgeGrading`, which ``GradeSamples`` shares: that module grades a folder from its manifest alone). Rank 0 writes
``<output_dir>/metrics_table.{json,md}`` (one row per sweep value, a reference row: the judge on the real data, and
the real-vs-real floor), which the study report quotes, and beside it ``sample_products/<group>.npz``: what the judge
saw of each sample, for bootstraps (``io.sample_products``); both go to ``grade_dir`` instead when it is set (a second
judge grading the same shards).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..diffusion.sampling import (check_sampling, model_sampler_kwargs, sample_ids, sampler_options,
                                  seeds_for_ids)
from ..guidance.sweep import Sweep, describe_network
from ..guidance.trace import TrajectoryRecorder
from ..io.digests import file_identity
from ..io.shards import (Shard, config_difference, config_hash, finished_shard, open_shard, plan_shards, shard_config,
                         write_manifest, write_shard)
from ..metrics.judge import Judge, check_judge
from .common import compile_net
from .grading import JudgeGrading, SampleFolder, describe_config
from .pretrained_diffusion import (PretrainedOptions, check_null_class, load_diffusion, pretrained_identity,
                                   shard_samples)


def _first(items):
    return items[0]


class SamplingModule(JudgeGrading, L.LightningModule):
    """Samples shards from a trained ``CFGDiffusion`` over a guidance sweep (``predict``), and grades them (``test``).

    Args:
        checkpoint: the diffusion model's checkpoint (e.g. ``runs/digits/cfg/checkpoints/last.ckpt``), or a diffusers
            model folder (``save_pretrained`` layout; see ``pretrained``).
        output_dir: where the shards, grids and manifest go (default: ``trainer.default_root_dir``).
        sampler: ``ddpm`` (ancestral), ``ddim`` or ``edm`` (Heun).
        sampler_kwargs: the sampler's options, checked when the config is built: ``{num_steps: 50}``; ``ddpm``:
            ``variance`` (``small``, the posterior variance, or ``large``, beta_t; a diffusers folder's scheduler
            config sets the default); ``ddim``: ``eta``; ``edm``: ``S_churn``, ``S_tmin``, ``S_tmax``, ``S_noise``,
            ``rho``...
        sweep: the sweep, ``{target, values, cfg_scale, terms, cfg_rule}``: ``target: cfg`` makes each value the CFG
            scale (``s = 0``: the unconditional model, ``s = 1``: the conditional one; a negative scale is refused);
            ``target: guidance`` multiplies every term's own scale by the value (0 = unguided).
        classes: the class ids to sample (default: every class of the model).
        samples_per_class: samples per class and sweep value (>= 1).
        shard_size: samples per shard file (>= 1).
        batch_size: samples per sampler call (>= 1; samples do not depend on it unless a term couples the batch).
        seed: sample ``i`` uses seed ``seed + i`` at every sweep value.
        use_ema: sample from the EMA weights (else the raw ones).
        net: the denoiser, only for a checkpoint that does not record how to build it.
        grid_per_class: samples per class (row) in each sweep value's ``grid.png``.
        judge: for ``test``: the classifier that grades (``lightning_guidance.metrics.judge.Judge``).
        fd_name: the name of the Fréchet distance in the judge's features (``fd_digits``; never "fid").
        precision_recall_k: k of the k-NN precision/recall (>= 1).
        inception_weights: a local Inception weights file: adds Inception FID to ``test``.
        inception_reference: an ``.npz`` of reference Inception statistics (``mu``, ``sigma``): FID against it
            instead of against the real images (needs ``inception_weights``).
        overwrite: regenerate shards made with another config (else they are refused).
        shard_part: ``[i, k]``: this job samples shards i, i + k, ... (task i of a k-task job array).
        save_trajectory: also store in each shard the path the sampler took (``trajectory``).
        pretrained: options of a diffusers model folder (:class:`~.pretrained_diffusion.PretrainedOptions`).
        compile: sample with ``torch.compile`` of the denoiser (equal samples to float rounding; a first compile per
            batch shape). Off by default.
        grade_dir: where ``test`` writes its table and per-sample products (default: ``output_dir``): a second
            judge grading the same shards writes beside the first's, not over it.
    """

    def __init__(self, checkpoint: str, output_dir: str | None = None, sampler: str = "ddim",
                 sampler_kwargs: dict | None = None, sweep: Sweep | None = None, classes: list[int] | None = None,
                 samples_per_class: int = 16, shard_size: int = 64, batch_size: int = 64, seed: int = 0,
                 use_ema: bool = True, net: nn.Module | None = None, grid_per_class: int = 10,
                 judge: Judge | None = None, fd_name: str = "fd_judge", precision_recall_k: int = 3,
                 inception_weights: str | None = None, overwrite: bool = False,
                 shard_part: tuple[int, int] | None = None, save_trajectory: bool = False,
                 pretrained: PretrainedOptions | None = None, inception_reference: str | None = None,
                 compile: bool = False, grade_dir: str | None = None):
        super().__init__()
        if shard_part is not None and not (len(shard_part) == 2 and 0 <= int(shard_part[0]) < int(shard_part[1])):
            raise ValueError(f"shard_part must be [i, k] with 0 <= i < k (this job samples shards i, i + k, ...), "
                             f"got {shard_part}")
        for name, v in (("samples_per_class", samples_per_class), ("shard_size", shard_size), ("batch_size", batch_size)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.sweep = sweep if sweep is not None else Sweep()
        self.sampler_kwargs = check_sampling(sampler, sampler_kwargs, self.sweep.terms)
        self.save_hyperparameters(ignore=["net", "sweep", "judge", "compile"])
        # a suite checkpoint file, or a diffusers model folder (with its `pretrained` options)
        self.pretrained = pretrained
        self.diffusion = load_diffusion(checkpoint, net, use_ema, pretrained).requires_grad_(False)
        check_null_class(self.diffusion, self.sweep, checkpoint)
        # the model's own sampler defaults (a diffusers folder's DDPM variance) under the given options: recorded
        self.sampler_kwargs = model_sampler_kwargs(self.diffusion, sampler, self.sampler_kwargs)
        # a net given here replaces the one the checkpoint records: its structure enters the shards' identity
        self._net_identity = None if net is None else describe_network(net)
        hp = self.diffusion.hparams
        self.sweep.check_against(self.diffusion.num_classes, self.diffusion.data_shape, hp.schedule, hp.num_train_steps)
        # registered, so that the terms' classifiers move to the sampling device with this module (each once)
        self.term_classifiers = nn.ModuleList(self.sweep.classifiers).requires_grad_(False)
        self.weak_model = self.diffusion.weak_model(self.sweep.cfg_rule)
        # autoguidance's worse network, registered likewise (a perturbed-attention view is of the main net)
        self.weak_net = self.weak_model.net if isinstance(getattr(self.weak_model, "net", None), nn.Module) else None
        if compile:  # the denoisers' forward; the samples equal the eager ones to float rounding
            for net_ in filter(None, (self.diffusion.net, self.weak_net)):
                compile_net(net_)
        k = self.diffusion.num_classes
        self.classes = list(range(k)) if classes is None else [int(c) for c in classes]
        bad = [c for c in self.classes if not 0 <= c < k]
        if bad:
            raise ValueError(f"classes {bad} out of range: the checkpoint's model knows classes 0..{k - 1}")
        self.num_samples = samples_per_class * len(self.classes)
        self.judge = judge

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
        sampler, the sweep at ``value`` (its guides' weights files by digest), the classes and seeds, the batch size
        where a batch-coupled term makes samples depend on who shares their batch, the trajectory when one is kept
        and the pretrained options that change a shard. Every other argument is result-neutral
        (tests/test_shard_identity.py holds the list)."""
        hp = self.hparams
        return {"checkpoint": file_identity(hp.checkpoint), "use_ema": hp.use_ema, "sampler": hp.sampler,
                "sampler_kwargs": {**sampler_options(hp.sampler), **self.sampler_kwargs}, "seed": hp.seed,
                "classes": self.classes, **self.sweep.identity(value),
                **({"net": self._net_identity} if self._net_identity is not None else {}),
                **({"batch_size": hp.batch_size} if self.sweep.couples_batch else {}),
                **({"trajectory": True} if hp.get("save_trajectory") else {}),
                **pretrained_identity(self.pretrained)}

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

    def sample(self, ids, value: float, batch_size: int | None = None, terms: tuple | None = None,
               record: TrajectoryRecorder | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples and labels of sample ids ``ids`` at one swept value (``terms``: others, e.g. traced; ``record``:
        keeps the sampler's path)."""
        setting = self.sweep.at(value, self.weak_model)
        if terms is not None or record is not None:
            own = setting.terms if terms is None else tuple(terms)
            setting = dataclasses.replace(setting, terms=(*own, *([record] if record else [])))
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
        recorder = TrajectoryRecorder() if self.hparams.get("save_trajectory") else None
        x, labels = self.sample(list(ids), value, record=recorder)
        images, extra = shard_samples(self.diffusion, x, self.pretrained, self.hparams.batch_size)
        if recorder is not None:
            extra = {**(extra or {}), "trajectory": recorder.path(x).numpy()}
        write_shard(path, Shard(images, labels, seeds_for_ids(ids, self.hparams.seed), torch.tensor(ids), value,
                                expected, config), extra)
        return {"path": str(path), "skipped": False}

    def on_predict_epoch_end(self) -> None:
        if self.trainer.world_size > 1:
            self.trainer.strategy.barrier("shards-written")
        if self.trainer.is_global_zero:
            values = self.sweep.values
            write_manifest(self.output_dir, {f"{v:g}": self.folder(v) for v in values},
                           {f"{v:g}": self.shard_config(v) for v in values}, self.num_samples, self.classes,
                           {f"{v:g}": self.sweep.describe(v) for v in values}, self.hparams.grid_per_class)

    # ---- test: the shards graded against real data by a judge (JudgeGrading) ------------------------------
    def setup(self, stage: str) -> None:
        if stage != "test":
            return
        dm = self.trainer.datamodule
        if self.judge is None:
            raise ValueError("SamplingModule test grades samples with a judge classifier: add judge: {class_path: "
                             "lightning_guidance.metrics.judge.Judge, init_args: {checkpoint: <a clean classifier "
                             "trained with e.g. configs/digits/judge.yaml>}} (see configs/digits/grade_with_judge.yaml)")
        if dm is None:
            raise ValueError("SamplingModule test compares the shards with real data: give the dataset the diffusion "
                             "model was trained on as data: (e.g. lightning_guidance.data.digits.DigitsDataModule)")
        check_judge(self.judge, getattr(dm, "num_classes", self.diffusion.num_classes), self.diffusion.num_classes,
                    self.sweep.terms)
        # described from the shard config, as GradeSamples describes a folder from its manifest (one wording)
        folders = [SampleFolder(v, self.folder(v), config_hash(self.shard_config(v)), self.shard_config(v),
                                describe_config(self.shard_config(v))) for v in self.sweep.values]
        # a latent model's shards hold decoded images
        self.start_grading(folders, self.num_samples, self.sweep.target, self.grade_dir,
                           getattr(self.diffusion, "image_shape", self.diffusion.data_shape))
