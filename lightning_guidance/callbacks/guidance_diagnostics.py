"""Guidance diagnostics along the sampling trajectory: the guidance-gradient size against t, the fraction of samples
whose gradient vanished, and the classifier's confidence in the requested class (see
:mod:`lightning_guidance.guidance.trace`; the failure mode of Javid et al. 2025, docs/math.md §4).

Where it runs:

- ``CFGDiffusion`` validation, every ``every_n_epochs`` epochs (and at every ``validate``): ``num_samples`` samples
  at each value of this callback's ``sweep`` (its ``terms`` need a classifier, e.g. ``TrainedClassifier``; by
  default one value, 1: the terms as configured at ``sweep.cfg_scale``), drawn at the first validation batch (EMA
  weights in place).
- ``SamplingModule`` test: the module's own sweep at each of its values, the same sample ids and seeds as its
  shards (the callback's ``sweep`` must then be left empty).

Each rank samples its own block of ids; per-step sums are added across ranks. Written by rank 0: a PNG and a JSON
per run under ``<log_dir>/<dirname>/`` (SamplingModule: ``<output_dir>/<dirname>/``); logged:
``<stage>/guidance_vanishing_fraction``, ``.../guidance_gradient_rms``, ``.../guidance_final_confidence`` per term.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import lightning as L
import torch

from ..data.rank_split import check_enough_per_rank, owned_block
from ..diffusion.plug import GuidanceTerm
from ..diffusion.sampling import check_sampling, sample_ids
from ..guidance.sweep import Sweep
from ..guidance.trace import GuidanceTrace, summarize_trace
from ..io.atomic import atomic_write_text
from ..io.figures import save_guidance_diagnostics
from ..modules.sampling import SamplingModule
from ..modules.trainer_io import evaluation_due, figure_dir, log_image


class GuidanceDiagnostics(L.Callback):
    """The guidance gradient's size against t, the share of samples whose gradient vanished, and the final confidence.

    Args:
        sweep: for ``CFGDiffusion`` validation: the values and terms to trace (the terms need a classifier); leave it
            empty under ``SamplingModule`` test, which traces its own sweep.
        every_n_epochs: trace every N validation epochs (>= 1).
        num_samples: samples per sweep value (>= 1).
        sampler: ``ddpm``, ``ddim`` or ``edm``.
        sampler_kwargs: the sampler's options (e.g. ``{num_steps: 50}``).
        seed: sample ``i`` uses seed ``seed + i``.
        batch_size: samples per sampler call (>= 1).
        vanishing_rms: a sample's guidance gradient counts as vanished below this RMS (> 0).
        dirname: the folder under the run's log folder.
    """

    def __init__(self, sweep: Sweep | None = None, every_n_epochs: int = 1, num_samples: int = 64, sampler: str = "ddim", sampler_kwargs: dict | None = None, seed: int = 0,
                 batch_size: int = 64, vanishing_rms: float = 1e-3, dirname: str = "guidance_diagnostics"):
        if every_n_epochs < 1 or num_samples < 1 or batch_size < 1:
            raise ValueError("every_n_epochs, num_samples and batch_size must be >= 1")
        if vanishing_rms <= 0:
            raise ValueError(f"vanishing_rms must be > 0, got {vanishing_rms}")
        self.sweep = sweep if sweep is not None else Sweep("guidance")
        self.sampler_kwargs = check_sampling(sampler, sampler_kwargs, self.sweep.terms)
        self.every_n_epochs, self.num_samples = every_n_epochs, num_samples
        self.sampler, self.seed = sampler, seed
        self.batch_size, self.vanishing_rms, self.dirname = batch_size, float(vanishing_rms), dirname
        self.last: dict[str, dict] | None = None
        self._active = False
        self._pending: dict[str, dict] | None = None

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        check_enough_per_rank(self.num_samples, trainer.world_size, "GuidanceDiagnostics num_samples")
        if isinstance(pl_module, SamplingModule):  # it brings its own guidance
            if self.sweep.terms:
                raise ValueError("GuidanceDiagnostics on a SamplingModule traces the module's own sweep; "
                                 "leave the callback's sweep empty")
            if not pl_module.sweep.terms:
                raise ValueError("GuidanceDiagnostics: this SamplingModule runs no guidance term (CFG only); "
                                 "there is no guidance gradient to trace")
        elif not self.sweep.terms:
            raise ValueError("GuidanceDiagnostics needs guidance terms (sweep: {terms: [...]}, e.g. "
                             "ClassifierGuidance with a TrainedClassifier) to trace during validation")

    # ---- tracing -------------------------------------------------------------------------------------
    def trace(self, trainer: L.Trainer, draw, terms: list[GuidanceTerm], device) -> dict[str, dict]:
        """``draw(ids, traced_terms)`` samples this rank's ids with every term traced; sums added across ranks
        (collective)."""
        traces = [GuidanceTrace(t, self.vanishing_rms) for t in terms]
        draw(torch.tensor(list(owned_block(self.num_samples, trainer.global_rank, trainer.world_size))), traces)
        out = {}
        for i, tr in enumerate(traces):
            sums = trainer.strategy.reduce(tr.sums.to(device), reduce_op="sum").cpu()
            out[f"{i}_{tr.name}"] = summarize_trace(sums, self.vanishing_rms)
        return out

    def _report(self, trainer: L.Trainer, pl_module, stage: str, tag: str, traces: dict[str, dict],
                out_dir: Path, name: str, title: str) -> None:
        for term, s in traces.items():
            prefix = f"{stage}/{tag + '/' if tag else ''}{term}"
            pl_module.log_dict({f"{prefix}/guidance_vanishing_fraction": s["mean_vanishing_fraction"],
                                f"{prefix}/guidance_gradient_rms": s["mean_gradient_rms"],
                                f"{prefix}/guidance_final_confidence": s["final_confidence"]}, sync_dist=True)
        if not trainer.is_global_zero:
            return
        atomic_write_text(out_dir / f"{name}.json", json.dumps({"num_samples": self.num_samples, "terms": traces},
                                                                indent=2))
        path = save_guidance_diagnostics(traces, out_dir / f"{name}.png", title=title)
        log_image(trainer, f"guidance_diagnostics/{tag or 'trace'}", path)

    # ---- CFGDiffusion validation -------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        self._active = not isinstance(pl_module, SamplingModule) and evaluation_due(trainer, self.every_n_epochs)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._active or batch_idx != 0 or dataloader_idx != 0:
            return
        self._active = False
        classes, self._pending = list(range(pl_module.num_classes)), {}
        weak_model = pl_module.weak_model(self.sweep.cfg_rule)
        for value in self.sweep.values:
            setting = self.sweep.at(value, weak_model)

            def draw(ids, traced, setting=setting):
                sample_ids(pl_module, ids, classes, self.seed, sampler=self.sampler, sampler_kwargs=self.sampler_kwargs,
                           setting=dataclasses.replace(setting, terms=traced), batch_size=self.batch_size,
                           on_batch=lambda x, y: None)

            # one sweep value: the figures carry no tag (val/<term>/...); several: one tag per value
            tag = self.sweep.folder(value) if len(self.sweep.values) > 1 else ""
            self._pending[tag] = self.trace(trainer, draw, setting.terms, pl_module.device)
        self.last = self._pending if len(self._pending) > 1 else self._pending[""]

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        out_dir = figure_dir(trainer, self.dirname)  # collective
        for (tag, traces), value in zip(pending.items(), self.sweep.values):
            name = f"epoch{trainer.current_epoch:04d}" + (f"_{tag}" if tag else "")
            self._report(trainer, pl_module, "val", tag, traces, out_dir, name,
                         f"epoch {trainer.current_epoch}, {self.sweep.describe(value)}")

    # ---- SamplingModule test -------------------------------------------------------------------------
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if not isinstance(pl_module, SamplingModule):
            return
        sweep = pl_module.sweep
        self.last = {}
        for value in sweep.values:
            def draw(ids, traced, value=value):
                pl_module.sample(ids, value, terms=traced)

            traces = self.trace(trainer, draw, pl_module.sweep.at(value, pl_module.weak_model).terms, pl_module.device)
            tag = sweep.folder(value)
            self.last[tag] = traces
            self._report(trainer, pl_module, "test", tag, traces, pl_module.output_dir / self.dirname, tag,
                         sweep.describe(value))
