"""``SamplingModule``: generate shards of samples from a trained diffusion checkpoint over a sweep, and grade them.

``checkpoint`` is a suite checkpoint file or a diffusers model folder (``save_pretrained`` layout, with the
``pretrained`` options of :mod:`.pretrained_diffusion`); a latent model's shards hold the decoded images.

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
accuracy and score, and Inception FID when ``inception_weights`` names a local file (against
``inception_reference``, a file of reference statistics, when given) (:class:`~lightning_guidance.modules.grading.
JudgeGrading`, which ``GradeSamples`` shares: that module grades a folder from its manifest alone). Rank 0 writes
``<output_dir>/metrics_table.{json,md}`` (one row per sweep value, a reference row: the judge on the real data, and
the real-vs-real floor), which the study report quotes, and beside it ``sample_products/<group>.npz``: what the judge
saw of each sample, for bootstraps (``io.sample_products``).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..diffusion.cfg_rule import ClassifierFreeGuidance
from ..diffusion.sampling import check_sampling, sample_ids, seeds_for_ids
from ..guidance.sweep import Sweep
from ..guidance.trace import TrajectoryRecorder
from ..io.digests import file_identity
from ..io.shards import (Shard, config_difference, config_hash, open_shard, plan_shards, shard_config,
                         shard_hash, write_manifest, write_shard)
from ..metrics.judge import Judge, check_judge
from .cfg_diffusion import CFGDiffusion
from .common import compile_net
from .grading import JudgeGrading, SampleFolder
from .pretrained_diffusion import (PretrainedOptions, check_null_class, load_diffusion, load_guide_model,
                                   pretrained_identity, shard_samples)


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
    guide = load_guide_model(rule.guide_checkpoint, diffusion, use_ema=rule.guide_use_ema).requires_grad_(False)
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


class SamplingModule(JudgeGrading, L.LightningModule):
    """Samples shards from a trained ``CFGDiffusion`` over a guidance sweep (``predict``), and grades them (``test``).

    Args:
        checkpoint: the diffusion model's checkpoint (e.g. ``runs/digits/cfg/checkpoints/last.ckpt``), or a diffusers
            model folder (``save_pretrained`` layout; see ``pretrained``).
        output_dir: where the shards, grids and manifest go (default: ``trainer.default_root_dir``).
        sampler: ``ddpm`` (ancestral), ``ddim`` or ``edm`` (Heun).
        sampler_kwargs: the sampler's options, checked when the config is built: ``{num_steps: 50}``; ``ddim``:
            ``eta``; ``edm``: ``S_churn``, ``S_tmin``, ``S_tmax``, ``S_noise``, ``rho``...
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
    """

    def __init__(self, checkpoint: str, output_dir: str | None = None, sampler: str = "ddim",
                 sampler_kwargs: dict | None = None, sweep: Sweep | None = None, classes: list[int] | None = None,
                 samples_per_class: int = 16, shard_size: int = 64, batch_size: int = 64, seed: int = 0,
                 use_ema: bool = True, net: nn.Module | None = None, grid_per_class: int = 10,
                 judge: Judge | None = None, fd_name: str = "fd_judge", precision_recall_k: int = 3,
                 inception_weights: str | None = None, overwrite: bool = False,
                 shard_part: tuple[int, int] | None = None, save_trajectory: bool = False,
                 pretrained: PretrainedOptions | None = None, inception_reference: str | None = None,
                 compile: bool = False):
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
        hp = self.diffusion.hparams
        self.sweep.check_against(self.diffusion.num_classes, self.diffusion.data_shape, hp.schedule, hp.num_train_steps)
        # registered, so that the terms' classifiers move to the sampling device with this module (each once)
        self.term_classifiers = nn.ModuleList(self.sweep.classifiers).requires_grad_(False)
        self.guide_diffusion = load_rule_guide(self.sweep.cfg_rule, self.diffusion)
        if compile:  # the denoisers' forward; the samples equal the eager ones to float rounding
            for model in filter(None, (self.diffusion, self.guide_diffusion)):
                compile_net(model.net)
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
                **({"trajectory": True} if hp.get("save_trajectory") else {}),
                **pretrained_identity(self.pretrained)}

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
                           f"{self.sweep.target} scale", self.hparams.grid_per_class)

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
        hp = self.hparams
        folders = [SampleFolder(v, self.folder(v), config_hash(self.shard_config(v)), self.shard_config(v),
                                f"{hp.sampler} {dict(self.sampler_kwargs)}, " + self.sweep.describe(v))
                   for v in self.sweep.values]
        # a latent model's shards hold decoded images
        self.start_grading(folders, self.num_samples, self.sweep.target, self.output_dir,
                           getattr(self.diffusion, "image_shape", self.diffusion.data_shape))
