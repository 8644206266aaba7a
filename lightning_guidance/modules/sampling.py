"""``SamplingModule``: generate shards of samples from a trained diffusion checkpoint, with any guidance.

``predict`` walks a plan of shards (sample ids × class labels × scales); each shard is sampled with per-sample
seeds (``seed + sample_id``, the same ids at every scale, so a sample can be followed across scales) and written
atomically; a shard already on disk with the same config hash is skipped, so a killed job resumes where it was.
Under DDP each rank takes whole shards (Lightning's unrepeated sampler for predict): no duplicates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..diffusion.noise import PerSampleNoise
from ..diffusion.sampling import sample
from ..guidance.base import SAMPLER_KINDS, GuidanceTerm, check_guidance_for_sampler
from ..io.atomic import atomic_write_text
from ..io.checkpoints import load_cfg_diffusion
from ..io.grids import save_sample_picture
from ..io.shards import Shard, config_hash, read_shard, shard_hash, write_shard

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


def describe_term(term: GuidanceTerm) -> dict:
    """The plain (JSON-able) settings of a guidance term, for the config hash and the report."""
    simple = (int, float, str, bool, type(None))
    return {"class": type(term).__name__,
            **{k: v for k, v in sorted(vars(term).items()) if isinstance(v, simple) and not k.startswith("_")}}


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
        self.save_hyperparameters(ignore=["net", "guidance"])
        self.diffusion = load_cfg_diffusion(checkpoint, net=net, use_ema=use_ema)
        self.diffusion.requires_grad_(False)
        self.guidance = list(guidance or [])
        check_guidance_for_sampler(self.guidance, sampler)
        k = self.diffusion.num_classes
        self.classes = list(range(k)) if classes is None else [int(c) for c in classes]
        bad = [c for c in self.classes if not 0 <= c < k]
        if bad:
            raise ValueError(f"classes {bad} out of range: the checkpoint's model knows classes 0..{k - 1}")
        self.output_dir = Path(output_dir)

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
                "guidance": [describe_term(t) for t in self.guidance], "classes": self.classes}

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
    def _terms_at(self, scale: float) -> tuple[float, list[GuidanceTerm]]:
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
        cfg, terms = self._terms_at(scale)
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
