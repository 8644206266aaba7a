"""``CFGDiffusion``: a class-conditional diffusion model trained for classifier-free guidance.

Training (Ho & Salimans 2021, alg. 1): with probability ``p_uncond`` the label is replaced by the null class
(id ``num_classes``); loss ``|| net(x_t, t, c) - target ||^2`` with ``target`` the eps / x0 / v of
:mod:`lightning_guidance.diffusion.parameterization`. EMA weights come from the :class:`~lightning_guidance.callbacks.ema.EMA`
callback; checkpoints carry them in ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..diffusion.cfg_rule import ClassifierFreeGuidance
from ..diffusion.denoiser import check_labels
from ..diffusion.guidance_setting import GuidanceSetting, WeakModel, needs_weak_model
from ..diffusion.noise import GlobalBatchDraws
from ..diffusion.parameterization import check_prediction, training_target
from ..diffusion.schedules import VPSchedule
from ..diffusion.sampling import sample_batches
from .common import (NetTrainingModule, check_against_datamodule, check_finite_loss, compile_net, global_batch_draws,
                     rebuild_from_checkpoint, reseed_for_step)


class CFGDiffusion(NetTrainingModule):
    """A class-conditional diffusion model trained for classifier-free guidance (``configs/<data>/cfg.yaml``).

    Args:
        net: the denoiser ``net(x_t, t, y)``, with ``num_classes`` and ``data_shape`` (label ``num_classes`` is the
            null class): ``lightning_guidance.nets.UNet`` for images, ``MLPDenoiser`` for points.
        schedule: noise schedule: ``linear`` or ``cosine``.
        num_train_steps: number of diffusion steps T of the schedule (e.g. 1000).
        prediction: what the net predicts: ``eps`` (the noise), ``x0`` (the clean sample) or ``v``.
        p_uncond: probability of replacing a label by the null class in training, in [0, 1) (the paper's best: 0.1).
        lr: AdamW learning rate (> 0).
        weight_decay: AdamW weight decay (>= 0).
        warmup_steps: steps of linear learning-rate warm-up (>= 0).
        clip_x0: clamp the predicted x0 to [-1, 1] when sampling (true for images, false for unbounded toy data).
        noise_seed: seed of the per-step draws (timesteps, noise, dropped labels): a resume draws what a straight run
            draws.
        compile: train with ``torch.compile`` of the net (same results, faster per step after a first compile; needs a
            C++ compiler on CPU). Off by default; not a hyper-parameter (a checkpoint resumes with it on or off).
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: str = "linear",
        num_train_steps: int = 1000,
        prediction: str = "eps",
        p_uncond: float = 0.1,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        clip_x0: bool = True,
        noise_seed: int = 0,
        compile: bool = False,
    ):
        super().__init__()
        if not 0.0 <= p_uncond < 1.0:
            raise ValueError(f"p_uncond must be in [0, 1), got {p_uncond} (the paper's best is 0.1)")
        check_prediction(prediction)
        if not hasattr(net, "num_classes"):
            raise ValueError(f"{type(net).__name__} has no num_classes attribute; CFGDiffusion needs a class-conditional net")
        self.save_hyperparameters(ignore=["compile"])  # how it runs, not what it computes: a resume may change it
        self.net = net
        self.compile_net = bool(compile)
        self.schedule = VPSchedule.from_name(schedule, num_train_steps)

    @classmethod
    def from_checkpoint(cls, path: str | Path, net: nn.Module | None = None, use_ema: bool = True) -> CFGDiffusion:
        """The model of a checkpoint (EMA weights by default), in eval mode."""
        return rebuild_from_checkpoint(cls, path, net, use_ema,
                                       "train one first with: python cli.py fit --config configs/<data>/cfg.yaml")

    # ---- properties -------------------------------------------------------------------------------
    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.net.data_shape)

    def setup(self, stage: str) -> None:
        check_against_datamodule(self, "CFGDiffusion")
        if self.compile_net and stage == "fit":
            compile_net(self.net, self.device)

    # ---- training ---------------------------------------------------------------------------------
    def diffusion_loss(self, x0: Tensor, y: Tensor, p_uncond: float, draws: GlobalBatchDraws | None = None) -> Tensor:
        """Per-batch mean squared error at uniformly drawn steps, with null-class dropout. ``draws``: this rank's
        rows of the global batch's draws (default: one process)."""
        check_labels(y, self.num_classes)
        draws = draws or GlobalBatchDraws()
        n = x0.shape[0]
        index = draws.randint(0, self.schedule.num_train_steps, n, device=x0.device)
        noise = draws.randn_like(x0)
        drop = draws.rand(n, device=x0.device) < p_uncond
        y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        x_t = self.schedule.q_sample(x0, index, noise)
        abar = self.schedule.alphas_cumprod.to(x0.device)[index]
        pred = self.net(x_t, self.schedule.model_time(index).to(x0), y)
        return F.mse_loss(pred, training_target(self.hparams.prediction, x0, noise, abar))

    def training_step(self, batch, batch_idx):
        x0, y = batch
        reseed_for_step(self.hparams.noise_seed, self.global_step)
        loss = self.diffusion_loss(x0, y, self.hparams.p_uncond, global_batch_draws(self))
        check_finite_loss(loss, self.global_step)
        # the global batch's loss: the mean of the ranks' means (equal shares), what one process would log
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x0, y = batch
        # a fixed draw per validation batch, so that val/loss is comparable across epochs and resumes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(10_000 + batch_idx)
            loss = self.diffusion_loss(x0, y, p_uncond=0.0)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=x0.shape[0])
        return loss

    # ---- sampling ---------------------------------------------------------------------------------
    @property
    def prediction(self) -> str:
        """What the network predicts (eps / x0 / v)."""
        return self.hparams.prediction

    @property
    def clip_x0(self) -> bool:
        return self.hparams.clip_x0

    def weak_model(self, rule: ClassifierFreeGuidance | None) -> WeakModel | None:
        """The worse model a CFG ``rule`` guides away from, checked against this model once: autoguidance's
        ``guide_checkpoint`` (a suite checkpoint or a diffusers model folder; frozen, in eval mode), or this network
        with the rule's self-attention blocks perturbed (refused for a network without them); None for a rule that
        guides with the null class. ``PretrainedDiffusion`` uses this same method."""
        if not needs_weak_model(rule):
            return None
        if rule.perturbation is not None:
            from ..nets.attention_perturbation import PerturbedAttention

            return WeakModel(PerturbedAttention.for_rule(self.net, rule), self.prediction)
        from .pretrained_diffusion import load_guide_model  # it builds on this module

        name = type(rule).__name__
        guide = load_guide_model(rule.guide_checkpoint, self, use_ema=rule.guide_use_ema).requires_grad_(False)
        ghp, hp = guide.hparams, self.hparams
        if (guide.num_classes, guide.data_shape) != (self.num_classes, self.data_shape):
            raise ValueError(f"{name}: the guide {rule.guide_checkpoint} models {guide.num_classes} classes of shape "
                             f"{guide.data_shape}, the main model {self.num_classes} of {self.data_shape}; "
                             "train the worse model on the same data")
        if (ghp.schedule, ghp.num_train_steps) != (hp.schedule, hp.num_train_steps):
            raise ValueError(f"{name}: the guide {rule.guide_checkpoint} was trained on a {ghp.schedule}/"
                             f"{ghp.num_train_steps} schedule, the main model on {hp.schedule}/{hp.num_train_steps}: "
                             "its t means another noise level; retrain it to match")
        return WeakModel(guide.net.to(self.device), guide.prediction)

    @torch.no_grad()
    def generate(self, labels: Tensor, seeds: Sequence[int] | Tensor, sampler: str = "ddim",
                 setting: GuidanceSetting | None = None, **sampler_kwargs) -> Tensor:
        """Samples for ``labels`` with per-sample ``seeds`` under guidance ``setting`` (default: the conditional
        model); a sample depends on its seed only. One batch."""
        return sample_batches(self, labels, seeds, sampler=sampler, sampler_kwargs=sampler_kwargs, setting=setting)[0]
