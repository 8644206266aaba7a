"""The ``test`` stage's grading of sample folders, and ``GradeSamples``: grade the folder a ``predict`` wrote.

``GradeSamples`` needs only that folder and a grading config (``configs/<data>/grade.yaml``): what was sampled is
read from the folder itself, its ``manifest.json`` (one entry per sweep value: the shards and the config they were
sampled with) or, for a folder without one (a post-processor's output), the shards, which record their config.
Nothing of the ``predict`` command is repeated and no model is loaded. Two graders:

- a judge (``judge:``, images): Fréchet distance in the judge's features, precision/recall, judge accuracy and score
  against the real data of ``data:`` (its test split), as ``SamplingModule``'s ``test`` (:class:`JudgeGrading`, shared);
- the exact density (no judge, a toy data module: the 1D mixture or the fractal): the samples' exact class-conditional
  log-density, Bayes wrong-class share, sliced Wasserstein distance, spread and recall against the data module's
  exact distribution (:func:`lightning_guidance.toy.exact_scores.score_samples`).

Either writes ``<samples>/metrics_table.{md,json}``; the ``test`` config goes to ``<samples>/test_config.yaml``,
beside ``predict``'s ``config.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch

from ..data.rank_split import LoaderBatchIds, check_enough_per_rank, owned_block
from ..guidance.sweep import SWEEP_AXES
from ..io.digests import file_identity
from ..io.shards import check_shards, config_hash, open_shard, read_manifest, read_shard, shard_paths
from ..io.tables import write_table
from ..metrics.judge import Judge, check_judge
from ..metrics.sample_quality import SampleQuality, write_quality_table


@dataclass(frozen=True)
class SampleFolder:
    """One swept value's folder of shards, with the config hash its shards must carry."""
    value: float
    folder: Path
    config_hash: str
    config: dict | None
    description: str


def describe_config(config: dict | None) -> str:
    """One line for a table: the sampler and the guidance a shard config records (``ddim {num_steps: 50}, CFG s =
    3``), as :meth:`~lightning_guidance.guidance.sweep.Sweep.describe` words it."""
    if not config:
        return "(not recorded)"
    value, target = float(config.get("value", 0.0)), config.get("target", "cfg")
    if "source" in config:  # samples written with io.shards.write_sample_folder
        return f"{config['source']}, {target} {value:g}"
    s = value if target == "cfg" else float(config.get("cfg_scale", 1.0))  # a CFG sweep's value is the CFG scale
    rule = (config.get("cfg_rule") or {}).get("class", "CFG") if isinstance(config.get("cfg_rule"), dict) else "CFG"
    terms = [f"{t.get('class', 'term')} (scale {float(t.get('scale', 1.0)) * (value if target == 'guidance' else 1):g})"
             for t in config.get("guidance") or []]
    return ", ".join([f"{config.get('sampler', '?')} {config.get('sampler_kwargs', {})}", f"{rule} s = {s:g}", *terms])


def sample_folders(samples: str | Path) -> tuple[list[SampleFolder], int, str]:
    """``(folders, samples per folder, sweep target)`` of what ``predict`` wrote in ``samples``."""
    root = Path(samples)
    if not root.is_dir():
        raise FileNotFoundError(f"samples folder not found: {root} (run predict first; give the folder it wrote, its "
                                "--model.init_args.output_dir or --trainer.default_root_dir)")
    manifest = read_manifest(root)
    if manifest is not None:
        out = []
        for label, entry in manifest["values"].items():
            config = entry.get("config")
            target = (config or {}).get("target", "cfg")
            folder = root / (Path(entry["grid"]).parent if entry.get("grid") else f"{target}_{label}")
            out.append(SampleFolder(float(label), folder, config_hash(config), config, describe_config(config)))
        if not out:
            raise ValueError(f"{root / 'manifest.json'} lists no samples: run predict again")
        return out, int(manifest["num_samples_per_value"]), (out[0].config or {}).get("target", "cfg")
    out, counts = [], set()
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and shard_paths(p)):
        first = read_shard(shard_paths(folder)[0])
        with open_shard(shard_paths(folder)[0]) as z:  # a post-processed shard is graded as its source
            expected = str(z["source_config_hash"]) if "source_config_hash" in z.files else first.config_hash
        ids = np.concatenate([np.asarray(read_shard(p).sample_ids) for p in shard_paths(folder)])
        counts.add(int(ids.max()) + 1)
        out.append(SampleFolder(first.value, folder, expected, None, describe_config(first.config)))
    if not out:
        raise FileNotFoundError(f"no samples in {root}: neither a manifest.json nor folders of shard_*.npz (run "
                                "predict first)")
    if len(counts) != 1:
        raise ValueError(f"the folders of {root} hold different numbers of samples {sorted(counts)}: re-run predict")
    return out, counts.pop(), (read_shard(shard_paths(out[0].folder)[0]).config or {}).get("target", "cfg")


def axis_name(target: str) -> str:
    """The swept value's name in a table's header (``CFG scale s``; the glossary of docs/architecture.md)."""
    return SWEEP_AXES.get(target, f"{target} value")


def guide_digests(config: dict | None) -> set[str]:
    """The content digests of the guidance classifiers a shard config names."""
    return {str((t.get("classifier") or {}).get("sha256")) for t in (config or {}).get("guidance") or []
            if (t.get("classifier") or {}).get("sha256")}


class JudgeGrading:
    """Mixin of a LightningModule's ``test`` stage: sample folders graded against the real data of the trainer's
    data module by ``self.judge`` (its hyper-parameters: ``fd_name``, ``precision_recall_k``, ``inception_weights``,
    ``batch_size``). Lightning's test loop iterates the real data (padded repeats dropped by sample index); at the end
    of the epoch each rank reads its own block of sample ids from the shards; rank 0 writes the table."""

    def start_grading(self, folders: list[SampleFolder], num_samples: int, target: str, output_dir: Path,
                      sample_shape: tuple[int, ...] | None = None) -> None:
        """``sample_shape``: the shards' sample shape when the data module does not state one."""
        hp, dm = self.hparams, self.trainer.datamodule
        check_enough_per_rank(num_samples, self.trainer.world_size, f"test of {output_dir}")
        need = max(2, hp.precision_recall_k + 1)
        if num_samples < need:
            raise ValueError(f"{num_samples} samples per swept value are too few: precision/recall with "
                             f"k={hp.precision_recall_k} and the Fréchet distance need at least {need}; "
                             "raise samples_per_class")
        self._real_shape = tuple(getattr(dm, "data_shape", ()) or ()) or tuple(sample_shape or ())
        self._grading = (folders, num_samples, target, Path(output_dir))
        self.quality = SampleQuality(self.judge, [f.folder.name for f in folders], hp.fd_name, hp.precision_recall_k,
                                     inception_weights=hp.inception_weights,
                                     inception_reference=hp.get("inception_reference"))
        self._shards = {f.folder.name: check_shards(f.folder, f.config_hash, num_samples, self._real_shape,
                                                    self.judge.num_classes, type(dm).__name__, f.config)
                        for f in folders}
        self._batch_ids = LoaderBatchIds()

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
        folders, num_samples, target, output_dir = self._grading
        rows, counts = {}, {}
        for f in folders:  # the same order on every rank: compute is collective
            group = f.folder.name
            owned = owned_block(num_samples, self.global_rank, self.trainer.world_size)
            self.quality.update_from_shards(group, self._shards[group], owned, self.hparams.batch_size, self.device)
            rows[group], counts[group] = self.quality.compute(group), self.quality.num_samples(group)
        real, counts["real"] = self.quality.compute_real(), self.quality.num_samples()
        for group, row in rows.items():
            self.log_dict({f"test/{group}/{k}": v for k, v in row.items()}, sync_dist=True)  # equal on all ranks
        self.log_dict({f"test/real/{k}": v for k, v in real.items()}, sync_dist=True)
        floor = self.quality.real_floor(num_samples)  # collective, like the per-sample files below
        self.quality.write_products(output_dir, write=self.trainer.is_global_zero)
        if self.trainer.is_global_zero:
            table = [{"value": f.value, "guidance": f.description, "num_samples": counts[f.folder.name],
                      "metrics": rows[f.folder.name]} for f in folders]
            write_quality_table(output_dir, self.judge, type(self.trainer.datamodule).__name__, self.hparams.fd_name,
                                num_samples, target, axis_name(target), table, real, counts["real"], floor,
                                self.quality.settings())


class GradeSamples(JudgeGrading, L.LightningModule):
    """Grades the folder of samples a ``predict`` wrote (``test`` only; ``configs/<data>/grade.yaml``).

    Args:
        samples: the folder ``predict`` wrote: ``manifest.json`` and a folder of shards per sweep value (or a
            post-processor's output folder, whose shards record their config).
        judge: grade with this classifier (``lightning_guidance.metrics.judge.Judge``) against the real data of
            ``data:``; leave it out for toy data (the 1D mixture, the fractal): the exact density grades.
        fd_name: the name of the Fréchet distance in the judge's features (``fd_digits``; never "fid").
        precision_recall_k: k of the k-NN precision/recall (>= 1).
        inception_weights: a local Inception weights file: adds Inception FID (images).
        inception_reference: an ``.npz`` of reference Inception statistics (``mu``, ``sigma``): FID against it
            instead of against the real images (needs ``inception_weights``).
        batch_size: samples read per batch (>= 1).
        reference_per_class: exact grading: exact samples per class to compare with (default: as many as samples).
        seed: exact grading: seed of the exact reference samples and the Wasserstein projections.
        num_projections: exact grading: directions of the sliced Wasserstein distance (>= 1).
    """

    def __init__(self, samples: str, judge: Judge | None = None, fd_name: str = "fd_judge",
                 precision_recall_k: int = 3, inception_weights: str | None = None,
                 inception_reference: str | None = None, batch_size: int = 256,
                 reference_per_class: int | None = None, seed: int = 0, num_projections: int = 64):
        super().__init__()
        if batch_size < 1 or num_projections < 1:
            raise ValueError(f"batch_size and num_projections must be >= 1, got {batch_size}, {num_projections}")
        self.save_hyperparameters(ignore=["judge"])
        self.judge = judge
        self.folders, self.num_samples, self.target = sample_folders(samples)

    @property
    def output_dir(self) -> Path:
        return Path(self.hparams.samples)

    def setup(self, stage: str) -> None:
        if stage != "test":
            raise ValueError(f"GradeSamples grades a folder of samples: run `test`, not `{stage}`")
        dm = self.trainer.datamodule
        if dm is None:
            raise ValueError("GradeSamples compares the samples with their data: give the data module they model as "
                             "data: (e.g. lightning_guidance.data.digits.DigitsDataModule)")
        if self.judge is None:
            if not hasattr(dm, "mixture"):
                raise ValueError(f"{type(dm).__name__} has no exact density: grade its samples with a judge (judge: "
                                 "{class_path: lightning_guidance.metrics.judge.Judge, init_args: {checkpoint: ...}})")
            return
        data_classes = getattr(dm, "num_classes", self.judge.num_classes)
        check_judge(self.judge, data_classes, data_classes)  # the shards' labels are checked against it too
        judge_file = file_identity(self.judge.checkpoint).get("sha256") if self.judge.checkpoint else None
        for f in self.folders:
            if judge_file and judge_file in guide_digests(f.config):
                raise ValueError(f"the judge {self.judge.checkpoint} guided the samples of {f.folder}: guidance "
                                 "would be graded by its own teacher; grade with a separate judge")
        self.start_grading(self.folders, self.num_samples, self.target, self.output_dir)

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        if self.judge is not None:
            return super().test_step(batch, batch_idx, dataloader_idx)
        return None  # exact grading needs no real batch

    def on_test_epoch_start(self) -> None:
        if self.judge is not None:
            super().on_test_epoch_start()

    def on_test_epoch_end(self) -> None:
        if self.judge is not None:
            return super().on_test_epoch_end()
        rows = self.exact_scores()
        for f, row in zip(self.folders, rows):
            self.log_dict({f"test/{f.folder.name}/{k}": float(v) for k, v in row.items() if k != "num_samples"})
        if self.trainer.is_global_zero:
            self.write_exact_table(rows)

    def exact_scores(self) -> list[dict[str, float]]:
        """Each folder's samples scored against the data module's exact distribution (every rank the same)."""
        from ..toy.exact_scores import score_samples

        mixture, hp = self.trainer.datamodule.mixture, self.hparams
        rows = []
        for f in self.folders:
            shards = [read_shard(p) for p in shard_paths(f.folder)]
            x, y = torch.cat([s.samples for s in shards]), torch.cat([s.labels for s in shards])
            if x.reshape(len(x), -1).shape[1] != mixture.dim:
                raise ValueError(f"{f.folder} holds samples of dimension {x.reshape(len(x), -1).shape[1]}, the exact "
                                 f"distribution of {type(self.trainer.datamodule).__name__} has {mixture.dim}")
            rows.append(score_samples(mixture, x, y, hp.reference_per_class, seed=hp.seed,
                                      num_projections=hp.num_projections, p=1))
        return rows

    def write_exact_table(self, rows: list[dict[str, float]]) -> tuple[Path, Path]:
        hp, name = self.hparams, type(self.trainer.datamodule).__name__
        keys = [k for k in rows[0] if k != "num_samples"]
        data = {"grader": "exact density", "real_data": name, "target": self.target,
                "num_samples_per_value": self.num_samples, "seed": hp.seed, "num_projections": hp.num_projections,
                "rows": [{"value": f.value, "guidance": f.description, "metrics": row}
                         for f, row in zip(self.folders, rows)]}
        intro = (f"Samples scored against the exact distribution of {name}, {self.num_samples} samples per value: "
                 "log p(x|y), the Bayes wrong-class share, sliced W1 "
                 f"({hp.num_projections} directions), spread (1 = exact) and recall against exact samples.")
        cells = [[f"{f.value:g}", f.description, str(row["num_samples"])] + [f"{row[k]:.4f}" for k in keys]
                 for f, row in zip(self.folders, rows)]
        return write_table(self.output_dir, "metrics_table", data, intro,
                           [axis_name(self.target), "guidance", "samples", *keys], cells)

    def configure_optimizers(self):
        return None
