"""``SamplingModule``: generate shards of samples from a trained diffusion checkpoint, with any guidance.

``predict`` walks a plan of shards (sample ids × class labels × scales); each shard is sampled with per-sample
seeds (``seed + sample_id``, the same ids at every scale, so a sample can be followed across scales) and written
atomically; a shard already on disk with the same config hash is skipped, so a killed job resumes where it was.
Under DDP each rank takes whole shards (Lightning's unrepeated sampler for predict): no duplicates.

``test`` grades the shards of every scale against real data with a judge classifier (``judge``, a
:class:`~lightning_guidance.evaluation.judge.Judge`): Fréchet distance in the judge's feature space (``fd_name``, e.g.
``fd_digits``), precision/recall, conditional accuracy and classifier score under the judge, and the Inception FID
when ``inception_weights`` names a local weights file. The real data is the LightningDataModule given as ``data:``
(its test split, e.g. ``DigitsDataModule``'s held-out split). Lightning's test loop iterates the real data (padded
repeats of its distributed sampler are dropped by sample index); at the end of the epoch each rank reads the
generated samples of its own block of sample ids from the shards, and the figures are reduced across ranks. The
shards must be the ones this same sampling config wrote (config hash), of the real data's shape. Rank 0 writes
``<output_dir>/metrics_table.json`` and ``metrics_table.md`` (one row per scale, and a reference row: the judge on
the real data), which the study report quotes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..diffusion.noise import PerSampleNoise
from ..diffusion.sampling import sample
from ..evaluation.rank_split import LoaderBatchIds, check_enough_per_rank, owned_block
from ..evaluation.sample_quality import SampleQuality
from ..guidance.base import SAMPLER_KINDS, GuidanceTerm, check_guidance_for_sampler
from ..io.atomic import atomic_write_text
from ..io.checkpoints import load_cfg_diffusion
from ..io.grids import save_sample_picture
from ..io.shards import (
    Shard,
    config_hash,
    from_uint8,
    read_shard,
    shard_hash,
    write_shard,
)

SCALE_TARGETS = ("cfg", "guidance")


@dataclass
class ShardPlan:
    path: str
    scale: float
    sample_ids: tuple[int, ...]


class _ShardPlans(Dataset):
    def __init__(self, plans: list[ShardPlan]):
        self.plans = plans

    def __len__(self) -> int:
        return len(self.plans)

    def __getitem__(self, i: int) -> ShardPlan:
        return self.plans[i]


def _first(items):
    return items[0]


def _file_identity(path: str | None) -> dict:
    if not path:
        return {}
    p = Path(path)
    return {"file": str(p.resolve()), "bytes": p.stat().st_size if p.exists() else None}


def describe_classifier(classifier: nn.Module) -> dict:
    """What identifies a guide: its weights file (suite checkpoint or timm/torchvision file) and its settings."""
    out = {"class": type(classifier).__name__, "settings": classifier.extra_repr()}
    out.update(_file_identity(getattr(classifier, "checkpoint", None) or getattr(classifier, "weights_path", None)))
    index = getattr(classifier, "class_index", None)
    if index is not None:
        out["class_index"] = index.tolist()
    return out


def describe_term(term: GuidanceTerm) -> dict:
    """The settings of a guidance term (plain values, its classifier and schedule), for the config hash and report."""
    simple = (int, float, str, bool, type(None))
    out = {"class": type(term).__name__,
           **{k: v for k, v in sorted(vars(term).items()) if isinstance(v, simple) and not k.startswith("_")}}
    if isinstance(getattr(term, "classifier", None), nn.Module):
        out["classifier"] = describe_classifier(term.classifier)
    schedule = getattr(term, "schedule", None)
    if schedule is not None:
        out["schedule"] = {"class": type(schedule).__name__,
                           **{k: v for k, v in vars(schedule).items() if isinstance(v, simple)}}
    return out


def check_guides(terms: list[GuidanceTerm], diffusion, sweep_cfg_scales: list[float]) -> None:
    """Refuse, before any sampling, a guide that cannot work with this diffusion model."""
    from ..guidance.cfg_plus_classifier import CFGPlusClassifierGuidance
    from ..guidance.log_likelihood import num_classes_of

    hp = diffusion.hparams
    for term in terms:
        name = type(term).__name__
        if isinstance(term, CFGPlusClassifierGuidance) and any(s == 1 for s in sweep_cfg_scales):
            raise ValueError(f"{name} rescales the classifier gradient to the CFG difference, which is 0 at CFG "
                             "scale 1: every CFG scale used must differ from 1")
        clf = getattr(term, "classifier", None)
        if not isinstance(clf, nn.Module):
            continue
        k = num_classes_of(clf)
        if k != diffusion.num_classes:
            raise ValueError(f"{name}: the classifier has {k} classes but the diffusion model has "
                             f"{diffusion.num_classes}; use one trained on the same labels (off-the-shelf: class_map)")
        shape = tuple(getattr(clf, "data_shape", ()) or ())
        if shape and shape != diffusion.data_shape:
            raise ValueError(f"{name}: the classifier was built for inputs {shape}, the samples are "
                             f"{diffusion.data_shape}")
        if getattr(term, "input", None) == "x_t" and hasattr(clf, "noisy"):
            if not clf.noisy:
                raise ValueError(f"{name} reads the noisy x_t but {clf.checkpoint} is a clean classifier; use a "
                                 "noisy one or input: x0_hat")
            if (clf.schedule_name, clf.num_train_steps) != (hp.schedule, hp.num_train_steps):
                raise ValueError(f"{name}: the classifier was trained on a {clf.schedule_name} schedule of "
                                 f"{clf.num_train_steps} steps, the diffusion model on {hp.schedule}/"
                                 f"{hp.num_train_steps}: its t means another noise level; retrain it to match")


class SamplingModule(L.LightningModule):
    def __init__(
        self,
        checkpoint: str,
        output_dir: str = "runs/samples",
        sampler: str = "ddim",
        sampler_kwargs: dict | None = None,
        scales: list[float] = (1.0,),
        scale_target: str = "cfg",
        cfg_scale: float = 1.0,
        guidance: list[GuidanceTerm] | None = None,
        classes: list[int] | None = None,
        samples_per_class: int = 16,
        shard_size: int = 64,
        batch_size: int = 64,
        seed: int = 0,
        use_ema: bool = True,
        net: nn.Module | None = None,
        grid_per_class: int = 10,
        judge: nn.Module | None = None,
        fd_name: str = "fd_judge",
        precision_recall_k: int = 3,
        inception_weights: str | None = None,
    ):
        super().__init__()
        if sampler not in SAMPLER_KINDS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLER_KINDS}")
        if scale_target not in SCALE_TARGETS:
            raise ValueError(f"scale_target must be one of {SCALE_TARGETS}, got {scale_target!r}")
        if not scales:
            raise ValueError("scales must list at least one value")
        for name, v in (("samples_per_class", samples_per_class), ("shard_size", shard_size), ("batch_size", batch_size)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.save_hyperparameters(ignore=["net", "guidance", "judge"])
        self.diffusion = load_cfg_diffusion(checkpoint, net=net, use_ema=use_ema)
        self.diffusion.requires_grad_(False)
        self.guidance = list(guidance or [])
        check_guidance_for_sampler(self.guidance, sampler)
        check_guides(self.guidance, self.diffusion, list(scales) if scale_target == "cfg" else [cfg_scale])
        # registered, so that the guides move to the sampling device with this module (each once)
        guides = {id(t.classifier): t.classifier for t in self.guidance if isinstance(getattr(t, "classifier", None), nn.Module)}
        self.guides = nn.ModuleList(guides.values()).requires_grad_(False)
        k = self.diffusion.num_classes
        self.classes = list(range(k)) if classes is None else [int(c) for c in classes]
        bad = [c for c in self.classes if not 0 <= c < k]
        if bad:
            raise ValueError(f"classes {bad} out of range: the checkpoint's model knows classes 0..{k - 1}")
        self.output_dir = Path(output_dir)
        self.judge = judge
        self.quality: SampleQuality | None = None
        self._shards: dict[str, list[tuple[Path, np.ndarray]]] = {}
        self._batch_ids = LoaderBatchIds()

    # ---- the plan -----------------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        return self.hparams.samples_per_class * len(self.classes)

    def label_of(self, sample_id: int) -> int:
        return self.classes[sample_id % len(self.classes)]

    def shard_config(self, scale: float) -> dict:
        hp = self.hparams
        ckpt = Path(hp.checkpoint)
        return {"checkpoint": str(ckpt.resolve()), "checkpoint_bytes": ckpt.stat().st_size, "use_ema": hp.use_ema,
                "sampler": hp.sampler, "sampler_kwargs": dict(hp.sampler_kwargs or {}), "scale": float(scale),
                "scale_target": hp.scale_target, "cfg_scale": hp.cfg_scale, "seed": hp.seed,
                "guidance": [describe_term(t) for t in self.guidance], "classes": self.classes,
                # a batch-coupled term (tilted guidance) makes samples depend on who shares their batch
                "batch_size": hp.batch_size if any(t.couples_batch for t in self.guidance) else None}

    def scale_dir(self, scale: float) -> Path:
        return self.output_dir / f"{self.hparams.scale_target}_{scale:g}"

    def plans(self) -> list[ShardPlan]:
        size = self.hparams.shard_size
        out = []
        for s in self.hparams.scales:
            for start in range(0, self.num_samples, size):
                ids = tuple(range(start, min(start + size, self.num_samples)))
                out.append(ShardPlan(str(self.scale_dir(s) / f"shard_{start:07d}.npz"), float(s), ids))
        return out

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(_ShardPlans(self.plans()), batch_size=1, shuffle=False, collate_fn=_first)

    # ---- sampling -----------------------------------------------------------------------------------
    def guidance_at(self, scale: float) -> tuple[float, list[GuidanceTerm]]:
        """The CFG scale and guidance terms for one sweep value."""
        if self.hparams.scale_target == "cfg":
            return scale, self.guidance
        import copy

        terms = [copy.copy(t) for t in self.guidance]  # shallow: classifiers shared, only `scale` differs
        for t in terms:
            t.scale = t.scale * scale
        return self.hparams.cfg_scale, terms

    @torch.no_grad()
    def sample_ids(self, sample_ids: list[int], scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hp = self.hparams
        labels = torch.tensor([self.label_of(i) for i in sample_ids], dtype=torch.long, device=self.device)
        seeds = torch.tensor([hp.seed + i for i in sample_ids], dtype=torch.long)
        cfg, terms = self.guidance_at(scale)
        out = []
        for lo in range(0, len(sample_ids), hp.batch_size):
            sl = slice(lo, lo + hp.batch_size)
            noise = PerSampleNoise(seeds[sl], device=self.device)
            out.append(sample(hp.sampler, self.diffusion.denoiser(cfg), self.diffusion.schedule, labels[sl], noise,
                              self.diffusion.data_shape, guidance=terms, **(hp.sampler_kwargs or {})))
        return torch.cat(out), labels, seeds

    def predict_step(self, plan: ShardPlan, batch_idx: int = 0):
        expected = config_hash(self.shard_config(plan.scale))
        path = Path(plan.path)
        if path.exists():
            found = shard_hash(path)
            if found == expected:
                return {"path": str(path), "skipped": True}
            if found is not None:
                raise ValueError(f"{path} was made with another sampling config (hash {found}, now {expected}); "
                                 "choose another output_dir or delete the old shards")
        x, labels, seeds = self.sample_ids(list(plan.sample_ids), plan.scale)
        write_shard(path, Shard(x, labels, seeds, torch.tensor(plan.sample_ids), plan.scale, expected))
        return {"path": str(path), "skipped": False}

    def on_predict_epoch_end(self) -> None:
        if self.trainer.world_size > 1:
            self.trainer.strategy.barrier("shards-written")
        if self.trainer.is_global_zero:
            self.write_manifest_and_grids()

    def write_manifest_and_grids(self) -> dict:
        manifest = {"num_samples_per_scale": self.num_samples, "classes": self.classes, "scales": {}}
        for s in self.hparams.scales:
            shards = sorted(self.scale_dir(s).glob("shard_*.npz"))
            loaded = [read_shard(p) for p in shards]
            if not loaded:
                continue
            x = torch.cat([sh.samples for sh in loaded])
            y = torch.cat([sh.labels for sh in loaded])
            picture = save_sample_picture(x, y, self.scale_dir(s) / "grid.png",
                                          title=f"{self.hparams.scale_target} scale {s:g}",
                                          per_class=self.hparams.grid_per_class)
            manifest["scales"][f"{s:g}"] = {"shards": [p.name for p in shards], "count": int(len(y)),
                                           "grid": str(picture), "config": self.shard_config(s)}
        atomic_write_text(self.output_dir / "manifest.json", json.dumps(manifest, indent=2))
        return manifest

    # ---- test: the shards graded against real data by a judge -------------------------------------------
    def group_name(self, scale: float) -> str:
        return self.scale_dir(scale).name

    def setup(self, stage: str) -> None:
        if stage != "test":
            return
        hp = self.hparams
        if self.judge is None:
            raise ValueError("SamplingModule test grades samples with a judge classifier: add judge: {class_path: "
                             "lightning_guidance.evaluation.judge.Judge, init_args: {checkpoint: <a clean classifier "
                             "trained with e.g. configs/digits/judge.yaml>}} (see configs/digits/test_cfg.yaml)")
        dm = self.trainer.datamodule
        if dm is None:
            raise ValueError("SamplingModule test compares the shards with real data: give the dataset the diffusion "
                             "model was trained on as data: (e.g. lightning_guidance.data.digits.DigitsDataModule)")
        self._check_judge(dm)
        num = self.num_samples
        check_enough_per_rank(num, self.trainer.world_size, f"SamplingModule test of {self.output_dir}")
        need = max(2, hp.precision_recall_k + 1)
        if num < need:
            raise ValueError(f"{num} samples per scale are too few: precision/recall with k={hp.precision_recall_k} "
                             f"and the Fréchet distance need at least {need}; raise samples_per_class")
        self.quality = SampleQuality(self.judge, [self.group_name(s) for s in hp.scales], hp.fd_name,
                                     hp.precision_recall_k, inception_weights=hp.inception_weights)
        real_shape = tuple(getattr(dm, "data_shape", ()) or ()) or self.diffusion.data_shape
        self._shards = {self.group_name(s): self._scan_shards(s, real_shape, type(dm).__name__) for s in hp.scales}
        self._real_shape = real_shape

    def _check_judge(self, dm) -> None:
        k = getattr(dm, "num_classes", self.diffusion.num_classes)
        if self.judge.num_classes != k or self.diffusion.num_classes != k:
            raise ValueError(f"class counts disagree: real data {k}, diffusion model {self.diffusion.num_classes}, "
                             f"judge {self.judge.num_classes}; judge with a classifier trained on the same dataset")
        judge_ckpt = getattr(self.judge, "checkpoint", None)
        for term in self.guidance:
            guide_ckpt = getattr(getattr(term, "classifier", None), "checkpoint", None)
            if judge_ckpt and guide_ckpt and Path(guide_ckpt).resolve() == Path(judge_ckpt).resolve():
                raise ValueError(f"the judge {judge_ckpt} is also the classifier of {type(term).__name__}: guidance "
                                 "would be graded by its own teacher; train a separate judge (configs/digits/judge.yaml)")

    def _scan_shards(self, scale: float, real_shape: tuple[int, ...], real_name: str) -> list[tuple[Path, np.ndarray]]:
        """``[(shard path, its sample ids)]`` of one scale, after checking the shards are this config's and complete."""
        folder = self.scale_dir(scale)
        paths = sorted(folder.glob("shard_*.npz"))
        if not paths:
            raise FileNotFoundError(f"no sample shards in {folder}: sample them first with `python cli.py predict` "
                                    "and the same model arguments as this test config")
        expected = config_hash(self.shard_config(scale))
        found, seen = [], []
        for path in paths:
            with np.load(path) as z:
                got, ids = str(z["config_hash"]), np.asarray(z["sample_ids"]).astype(np.int64)
                shape, labels = tuple(int(v) for v in z["data_shape"]), np.asarray(z["labels"])
            if got != expected:
                raise ValueError(f"{path} was sampled with another config (hash {got}, this test config gives "
                                 f"{expected}): test with the model arguments that sampled it, or re-run predict")
            if shape != tuple(real_shape):
                raise ValueError(f"{path} holds samples of shape {shape} but the real data ({real_name}) has shape "
                                 f"{tuple(real_shape)}: grade shards against the dataset and resolution they were "
                                 "generated for")
            if labels.size and (labels.min() < 0 or labels.max() >= self.judge.num_classes):
                raise ValueError(f"{path} holds labels outside 0..{self.judge.num_classes - 1} (the real data's "
                                 "classes): it was generated for another dataset")
            found.append((path, ids))
            seen.append(ids)
        all_ids = np.sort(np.concatenate(seen))
        if not np.array_equal(all_ids, np.arange(self.num_samples)):
            raise ValueError(f"the shards in {folder} hold {len(np.unique(all_ids))} distinct of the {self.num_samples} "
                             "sample ids this config asks for: predict was interrupted; re-run it (it resumes)")
        return found

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

    def _update_generated(self, group: str) -> None:
        """Feed this rank's block of sample ids of one scale to the metrics, reading only the shards that hold it."""
        owned = owned_block(self.num_samples, self.global_rank, self.trainer.world_size)
        for path, ids in self._shards[group]:
            rows = np.nonzero((ids >= owned.start) & (ids < owned.stop))[0]
            if rows.size == 0:
                continue
            with np.load(path) as z:
                images, labels = z["images"][rows], z["labels"][rows]
            for lo in range(0, len(rows), self.hparams.batch_size):
                sl = slice(lo, lo + self.hparams.batch_size)
                self.quality.update_generated(group, from_uint8(images[sl]).to(self.device),
                                              torch.from_numpy(labels[sl]).to(self.device))

    def on_test_epoch_end(self) -> None:
        rows, counts = {}, {}
        for group in self._shards:  # the same order on every rank: compute is collective
            self._update_generated(group)
            rows[group] = self.quality.compute(group)
            counts[group] = self.quality.num_samples(group)
        real = self.quality.compute_real()
        counts["real"] = self.quality.num_samples()
        for group, row in rows.items():
            self.log_dict({f"test/{group}/{k}": v for k, v in row.items()}, sync_dist=True)  # equal on all ranks
        self.log_dict({f"test/real/{k}": v for k, v in real.items()}, sync_dist=True)
        if self.trainer.is_global_zero:
            self.write_metrics_table(rows, real, counts)

    def describe_guidance(self, scale: float) -> str:
        hp = self.hparams
        cfg, terms = self.guidance_at(scale)
        parts = [f"{hp.sampler} {dict(hp.sampler_kwargs or {})}", f"CFG {cfg:g}"]
        parts += [f"{type(t).__name__} (scale {t.scale:g})" for t in terms]
        return ", ".join(parts)

    def write_metrics_table(self, rows: dict[str, dict[str, float]], real: dict[str, float],
                            counts: dict[str, int]) -> tuple[Path, Path]:
        hp = self.hparams
        dm = self.trainer.datamodule
        judge = getattr(self.judge, "checkpoint", None) or type(self.judge).__name__
        table = {"judge": judge, "judge_num_features": self.judge.num_features, "real_data": type(dm).__name__,
                 "fd_name": hp.fd_name, "num_samples_per_scale": self.num_samples, "scale_target": hp.scale_target,
                 "rows": [{"scale": float(s), "guidance": self.describe_guidance(s),
                           "num_samples": counts[self.group_name(s)], "metrics": rows[self.group_name(s)]}
                          for s in hp.scales],
                 "real": real, "num_real_samples": counts["real"]}
        json_path = atomic_write_text(self.output_dir / "metrics_table.json", json.dumps(table, indent=2))
        keys = list(next(iter(rows.values())))
        intro = (f"Samples graded by the judge `{judge}` against the real data of {type(dm).__name__}, "
                 f"{self.num_samples} samples per scale. `{hp.fd_name}` is the Fréchet distance in the judge's "
                 f"{self.judge.num_features} penultimate features (not Inception FID).")
        lines = [intro, "",
                 f"| {hp.scale_target} scale | guidance | samples | " + " | ".join(keys) + " |",
                 "|---|---|---|" + "---|" * len(keys)]
        for row in table["rows"]:
            lines.append(f"| {row['scale']:g} | {row['guidance']} | {row['num_samples']} | "
                         + " | ".join(f"{row['metrics'][k]:.4f}" for k in keys) + " |")
        lines.append(f"| real data | (the judge on the real data) | {counts['real']} | "
                     + " | ".join(f"{real[k]:.4f}" if k in real else "—" for k in keys) + " |")
        md_path = atomic_write_text(self.output_dir / "metrics_table.md", "\n".join(lines) + "\n")
        return json_path, md_path
