"""``RectifiedFlowPostprocessor``: a rectified flow that carries generated samples to their top-k nearest real
neighbours (Zhao & Schwing 2025, §5 eq. 9 and App. B; docs/math.md §5).

Training: for a generated ``x0`` (from ``GeneratedShardsDataModule``) one of its ``k`` nearest real samples ``x1`` is
drawn at every step (per-sample seeded, :mod:`lightning_guidance.flow.draws`), and the velocity net regresses
``x1 - x0`` at ``x_t = t x1 + (1 - t) x0``. Samples that are already good sit close to their neighbours and get a
small target; those near a decision boundary get a large one. The neighbour lists are searched once per set of
inputs (faiss, pixels or the features of ``feature_net``), each rank searching its own block of generated samples
against the full real index, and stored in a digest-keyed cache. EMA, periodic checkpoints and exact resume work as
for ``CFGDiffusion`` (EMA callback, draws that depend on (sample, step) only, ``EpochShuffleSampler``).

Predict: every shard of the data module's ``predict_shards`` (folders of ``shard_*.npz``, any guidance and swept value) is integrated from
t = 0 to 1 (Euler or dopri5) and written atomically to ``<output_dir>/<folder name>/<shard name>`` with the same
ids, labels, seeds and swept value, plus ``source_value``, ``source_config_hash`` (so ``SamplingModule``'s ``test`` stage
grades it with the sampling config that made the source), ``displacement`` (L2 move per sample) and ``nfe``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..data.rank_split import owned_block
from ..flow.cache import NeighbourCache, array_digest, json_digest
from ..flow.draws import draw_neighbour_and_time, sample_keys
from ..flow.integrate import check_integrator, integrate
from ..flow.neighbours import IndexSettings, top_k_neighbours
from ..flow.path import flow_matching_loss
from ..flow.search_space import SearchSpace, module_digest
from ..io.atomic import atomic_write_text
from ..io.digests import file_digest
from ..io.figures import save_move_picture
from ..io.file_references import reference_to
from ..io.shards import Shard, config_hash, read_shard, shard_hash, source_of, write_shard
from .common import NetTrainingModule, check_data_shape, check_finite_loss


PREDICT_OPTIONS = ("integrator", "integrator_kwargs", "output_dir", "batch_size", "per_class")


class RectifiedFlowPostprocessor(NetTrainingModule):
    """A rectified flow carrying generated samples toward their k nearest real neighbours (``configs/*/flow*.yaml``).

    Args:
        net: the velocity net ``net(x, t, y)`` (``UNet`` for images, ``MLPDenoiser`` for points).
        k: neighbours per generated sample (>= 1; the paper: 20).
        same_class: search neighbours among real samples of the sample's class only.
        feature_net: search in this network's features (e.g. the judge, an ``OffTheShelfClassifier``) instead of pixels.
        index: faiss index: ``flat`` (exact) or ``ivf`` (approximate, with ``nlist`` and ``nprobe``).
        nlist: IVF cells (>= 1).
        nprobe: IVF cells searched per query (>= 1).
        faiss_device: ``auto``, ``cpu`` or ``gpu``.
        neighbour_cache_dir: where the neighbour lists are cached (default: ``<default_root_dir>/neighbours``).
        class_conditional: condition the velocity on the sample's label (else on the null class).
        lr: AdamW learning rate (> 0).
        weight_decay: AdamW weight decay (>= 0).
        warmup_steps: steps of linear learning-rate warm-up (>= 0).
        flow_seed: seed of the per-(sample, step) draws of neighbour and time.
        integrator: ``predict``: ``euler`` or ``dopri5``.
        integrator_kwargs: the integrator's options (``euler``: ``num_steps``; ``dopri5``: ``rtol``, ``atol``).
        output_dir: ``predict``: where the post-processed shards go.
        batch_size: ``predict``: samples per integration batch (>= 1).
        feature_batch_size: samples per ``feature_net`` batch when searching (>= 1).
        per_class: ``predict``: samples per class in ``moves.png``.
    """

    def __init__(
        self,
        net: nn.Module,
        k: int = 20,
        same_class: bool = False,
        feature_net: nn.Module | None = None,
        index: str = "flat",
        nlist: int = 100,
        nprobe: int = 10,
        faiss_device: str = "auto",
        neighbour_cache_dir: str | None = None,
        class_conditional: bool = True,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        flow_seed: int = 0,
        integrator: str = "euler",
        integrator_kwargs: dict | None = None,
        output_dir: str = "runs/postprocessed",
        batch_size: int = 256,
        feature_batch_size: int = 512,
        per_class: int = 10,
    ):
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k} (the paper uses k = 20)")
        self.integrator, self.integrator_kwargs = integrator, check_integrator(integrator, integrator_kwargs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not hasattr(net, "num_classes") or not hasattr(net, "data_shape"):
            raise ValueError(f"{type(net).__name__} needs num_classes and data_shape attributes (use the suite's "
                             "UNet for images, MLPDenoiser for points)")
        self.index_settings = IndexSettings(index, nlist, nprobe, faiss_device)
        # predict-time options are not hyper-parameters: LightningCLI applies a checkpoint's hyper-parameters over
        # the command line when --ckpt_path is given, and the integrator or output folder must stay the user's choice
        self.save_hyperparameters(ignore=["feature_net", *PREDICT_OPTIONS])
        self.output_dir, self.batch_size, self.per_class = str(output_dir), int(batch_size), int(per_class)
        self.net = net
        self.search_space = SearchSpace(feature_net, feature_batch_size)
        self._pairs: dict[str, Tensor] = {}
        self.neighbour_cache_reused: bool | None = None

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.net.data_shape)

    def velocity(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """``v_theta(x, t)``, conditioned on the sample's label (or on the null class when not class_conditional)."""
        if not self.hparams.class_conditional:
            y = torch.full_like(y, self.num_classes)
        return self.net(x, t, y)

    # ---- neighbours -------------------------------------------------------------------------------------
    def neighbour_description(self, dm) -> dict:
        hp = self.hparams
        return {"generated": dm.generated.file_digests, "real": dm.real_digest(), "space": self.search_space.describe(),
                "k": hp.k, "same_class": hp.same_class, "index": self.index_settings.describe()}

    def find_neighbours(self, dm) -> tuple[np.ndarray, np.ndarray]:
        """The (N, k) neighbour table of every generated sample: from the cache, or searched (each rank its own
        block of generated samples against the full real index) and gathered, then stored by rank 0."""
        hp = self.hparams
        description = self.neighbour_description(dm)
        digest = json_digest(description)
        folder = hp.neighbour_cache_dir or str(Path(self.trainer.default_root_dir) / "neighbours")
        cache = NeighbourCache(folder)
        strategy, world, rank = self.trainer.strategy, self.trainer.world_size, self.trainer.global_rank
        hit = cache.load(digest) is not None if rank == 0 else False
        hit = bool(strategy.broadcast(hit, src=0)) if world > 1 else hit
        if hit:
            distances, indices = cache.load(digest)
            self.neighbour_cache_reused = True
            return distances, indices
        gen = dm.generated
        n = len(gen.labels)
        block = owned_block(n, rank, world)
        distances, indices = top_k_neighbours(
            self.search_space.rows(gen.samples[block.start:block.stop], self.device),
            self.search_space.rows(dm.real_x, self.device), hp.k, self.index_settings,
            gen.labels[block.start:block.stop].numpy(), dm.real_y.numpy(), hp.same_class)
        if world > 1:
            distances, indices = self._gather_blocks(n, distances, indices)
        if rank == 0:
            cache.store(digest, description, distances, indices)
        if world > 1:
            strategy.barrier("neighbour-cache-written")
        self.neighbour_cache_reused = False
        return distances, indices

    def _gather_blocks(self, n: int, distances: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        world = self.trainer.world_size
        width = max(len(owned_block(n, r, world)) for r in range(world))
        pad = width - len(distances)
        d = torch.from_numpy(np.pad(distances, ((0, pad), (0, 0)))).to(self.device)
        i = torch.from_numpy(np.pad(indices, ((0, pad), (0, 0)))).to(self.device)
        d_all, i_all = self.all_gather(d).cpu(), self.all_gather(i).cpu()  # (world, width, k)
        sizes = [len(owned_block(n, r, world)) for r in range(world)]
        return (np.concatenate([d_all[r, :s].numpy() for r, s in enumerate(sizes)]),
                np.concatenate([i_all[r, :s].numpy() for r, s in enumerate(sizes)]))

    # ---- training -------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "generated"):
            raise ValueError("RectifiedFlowPostprocessor trains on generated shards next to real data: give "
                             "data: {class_path: lightning_guidance.data.generated.GeneratedShardsDataModule, ...}")
        check_data_shape(self.net, dm.data_shape, "RectifiedFlowPostprocessor")
        if dm.num_classes != self.num_classes:
            raise ValueError(f"RectifiedFlowPostprocessor: the real data has {dm.num_classes} classes but the velocity "
                             f"net was built for {self.num_classes}; set the net's num_classes to match")
        distances, indices = self.find_neighbours(dm)
        gen = dm.generated
        self._pairs = {"real_x": dm.real_x.float(), "neighbours": torch.from_numpy(indices),
                       "keys": sample_keys(gen.seeds, gen.values),
                       "nearest_distance": torch.from_numpy(distances[:, 0]).float()}

    def on_fit_start(self) -> None:
        self._pairs = {name: t.to(self.device) for name, t in self._pairs.items()}

    def training_step(self, batch, batch_idx):
        x0, y, rows = batch
        hp = self.hparams
        choice, t = draw_neighbour_and_time(self._pairs["keys"][rows], self.global_step, hp.flow_seed, hp.k)
        x1 = self._pairs["real_x"][self._pairs["neighbours"][rows, choice]]
        loss = flow_matching_loss(lambda x, tt: self.velocity(x, tt, y), x0, x1, t.to(x0))
        loss = check_finite_loss(loss, self.global_step)
        # the global batch's figures: under DDP every rank holds an equal share, so the mean of the ranks' means
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, sync_dist=True)
        self.log("train/pair_distance", (x1 - x0).flatten(1).norm(dim=1).mean(), on_step=True, on_epoch=False,
                 sync_dist=True)
        return loss

    # ---- post-processing -----------------------------------------------------------------------------
    @torch.no_grad()
    def postprocess(self, x0: Tensor, y: Tensor) -> tuple[Tensor, int]:
        """Integrate ``dx/dt = v(x, t | y)`` from ``x0`` at t = 0 to t = 1 in batches; ``(x1, total NFE)``."""
        out, nfe = [], 0
        for lo in range(0, len(x0), self.batch_size):
            xb, yb = x0[lo:lo + self.batch_size].to(self.device), y[lo:lo + self.batch_size].to(self.device)
            sol = integrate(lambda x, t: self.velocity(x, t, yb), xb, self.integrator, **self.integrator_kwargs)
            out.append(sol.x)
            nfe += sol.nfe
        return torch.cat(out), nfe

    def on_predict_start(self) -> None:
        self._weights_digest = module_digest(self.net)

    def output_config(self, source_hash: str, source_digest: str) -> dict:
        hp = self.hparams
        integrator = {"integrator": self.integrator, **self.integrator_kwargs}
        if self.integrator == "dopri5":  # its step size is shared by a batch: the batch is part of the result
            integrator["batch_size"] = self.batch_size
        return {"flow_weights": self._weights_digest, "class_conditional": hp.class_conditional,
                "integrator": integrator, "source_config_hash": source_hash, "source_digest": source_digest}

    def target_of(self, source: str | Path) -> Path:
        """``<output_dir>/<the source's folder name>/<the source's file name>``."""
        source = Path(source)
        return Path(self.output_dir) / source.parent.name / source.name

    def predict_step(self, source_path: str, batch_idx: int = 0):
        plan_source, target = str(source_path), self.target_of(source_path)
        source = read_shard(plan_source)
        shape = tuple(source.samples.shape[1:])
        if shape != self.data_shape:
            raise ValueError(f"{plan_source} holds samples of shape {shape} but the flow was trained on "
                             f"{self.data_shape}: post-process shards of the dataset the flow was trained for")
        if len(source.labels) and (source.labels.min() < 0 or source.labels.max() >= self.num_classes):
            raise ValueError(f"{plan_source} holds labels outside 0..{self.num_classes - 1}: it was generated for "
                             "another dataset")
        expected = config_hash(self.output_config(source.config_hash, file_digest(plan_source, digits=64)))
        if target.exists():
            found = shard_hash(target)
            if found == expected:
                return {"path": str(target), "skipped": True}
            if found is not None:
                raise ValueError(f"{target} was post-processed with another flow or from another source (hash {found}, "
                                 f"now {expected}); choose another output_dir or delete the old shards")
        x1, nfe = self.postprocess(source.samples.float(), source.labels.long())
        moved = (x1.cpu() - source.samples.float()).flatten(1).norm(dim=1)
        extra = {"source_config_hash": source.config_hash, "source_value": np.float64(source.value),
                 "source_file": reference_to(plan_source, target), "displacement": moved.numpy().astype(np.float32),
                 "nfe": np.int64(nfe), "postprocessed": True}
        write_shard(target, Shard(x1, source.labels, source.seeds, source.sample_ids, source.value, expected), extra)
        return {"path": str(target), "skipped": False, "nfe": nfe}

    def on_predict_epoch_end(self) -> None:
        if self.trainer.world_size > 1:
            self.trainer.strategy.barrier("postprocessed-shards-written")
        if self.trainer.is_global_zero:
            self.write_summary()

    def write_summary(self) -> dict:
        """``<output_dir>/postprocess_summary.json`` (per folder: samples, NFE, the moves' mean, median and
        quantiles) and one picture per folder of what moved (``moves.png``)."""
        summary = {"integrator": self.integrator, "integrator_kwargs": self.integrator_kwargs, "folders": {}}
        for folder in sorted(p for p in Path(self.output_dir).iterdir() if p.is_dir()):
            before, after, labels, moves, nfes = [], [], [], [], []
            for path in sorted(folder.glob("shard_*.npz")):
                with np.load(path) as z:
                    if "displacement" not in z.files:
                        continue
                    moves.append(torch.from_numpy(z["displacement"]))
                    nfes.append(int(z["nfe"]))
                out = read_shard(path)
                after.append(out.samples.float())
                labels.append(out.labels)
                before.append(read_shard(source_of(path)).samples.float())
            if not moves:
                continue
            move = torch.cat(moves)
            picture = save_move_picture(torch.cat(before), torch.cat(after), torch.cat(labels),
                                        Path(folder) / "moves.png", title=f"{Path(folder).name}: before -> after",
                                        per_class=self.per_class)
            q = torch.quantile(move.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
            summary["folders"][Path(folder).name] = {
                "samples": int(len(move)), "nfe_total": int(sum(nfes)), "move_mean": float(move.mean()),
                "move_q10": q[0], "move_median": q[1], "move_q90": q[2], "picture": str(picture)}
        atomic_write_text(Path(self.output_dir) / "postprocess_summary.json", json.dumps(summary, indent=2))
        return summary
