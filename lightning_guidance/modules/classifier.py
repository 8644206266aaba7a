"""``Classifier``: train a classifier for guidance or grading, on noisy data (``noisy: true``, the default) or clean.

Noisy (Dhariwal & Nichol 2021, §4.1, app. H): a time-dependent ``p(y | x_t, t)``, cross-entropy on
``x_t ~ q(x_t | x_0)`` with the step drawn uniformly (here from ``t_range`` of the training steps), AdamW. Clean
(``noisy: false``): the same module trains on clean images and calls the net with ``t=None``: the classifier of
off-the-shelf guidance, and a judge.
Validation logs accuracy per t-bucket (``val/acc_t{lo}-{hi}``) on a fixed draw, and clean accuracy.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..calibration.ece import bucket_name, time_buckets
from ..diffusion.denoiser import check_labels
from ..diffusion.noise import GlobalBatchDraws
from ..diffusion.schedules import VPSchedule
from .common import (NetTrainingModule, check_against_datamodule, check_finite_loss, global_batch_draws,
                     rebuild_from_checkpoint, reseed_for_step)


class Classifier(NetTrainingModule):
    """A classifier for guidance or grading (``configs/<data>/classifier.yaml``; ``judge.yaml`` for a judge).

    Args:
        net: the classifier ``net(x, t=None) -> logits`` with ``num_classes``: ``EncoderClassifier`` (of
            ``lightning_guidance.nets``) for images, ``MLPClassifier`` or ``LinearClassifier`` for points.
        noisy: true: a time-dependent classifier ``p(y | x_t, t)`` trained on noised data (classifier guidance);
            false: a clean classifier (off-the-shelf guidance, a judge).
        schedule: noise schedule of the diffusion model it guides: ``linear`` or ``cosine``.
        num_train_steps: diffusion steps T of that schedule.
        t_range: ``[lo, hi]`` within [0, 1]: the fraction of the diffusion steps drawn in training (noisy only).
        lr: AdamW learning rate (> 0).
        weight_decay: AdamW weight decay (>= 0).
        warmup_steps: steps of linear learning-rate warm-up (>= 0).
        label_smoothing: cross-entropy label smoothing, in [0, 1).
        num_t_buckets: number of equal time buckets of ``t_range`` whose accuracy validation logs (>= 1).
        noise_seed: seed of the per-step draws (timesteps and noise).
    """

    def __init__(
        self,
        net: nn.Module,
        noisy: bool = True,
        schedule: str = "linear",
        num_train_steps: int = 1000,
        t_range: tuple[float, float] = (0.0, 1.0),
        lr: float = 3e-4,
        weight_decay: float = 0.05,
        warmup_steps: int = 0,
        label_smoothing: float = 0.0,
        num_t_buckets: int = 4,
        noise_seed: int = 0,
    ):
        super().__init__()
        time_buckets(t_range, num_t_buckets)  # refuses a bad range or bucket count
        if not hasattr(net, "num_classes"):
            raise ValueError(f"{type(net).__name__} has no num_classes attribute")
        self.save_hyperparameters()
        self.net = net
        self.schedule = VPSchedule.from_name(schedule, num_train_steps)

    @classmethod
    def from_checkpoint(cls, path: str | Path, net: nn.Module | None = None, use_ema: bool = True) -> Classifier:
        """The classifier of a checkpoint (noisy or clean twin; EMA weights by default), frozen, in eval mode."""
        module = rebuild_from_checkpoint(
            cls, path, net, use_ema, "train one first with: python cli.py fit --config configs/<data>/classifier.yaml")
        return module.requires_grad_(False)

    def setup(self, stage: str) -> None:
        check_against_datamodule(self, "Classifier")

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        return self.net(x, t)

    def _index_range(self) -> tuple[int, int]:
        lo, hi = self.hparams.t_range
        top = self.schedule.num_train_steps - 1
        return round(lo * top), round(hi * top)

    def logits_at(self, x0: Tensor, index: Tensor | None, draws: GlobalBatchDraws | None = None) -> Tensor:
        """Logits on ``x0`` noised to the given training-step indices (None: the clean image, t=None); ``draws``:
        this rank's rows of the global batch's noise (default: one process)."""
        if index is None:
            return self.net(x0, None)
        x_t = self.schedule.q_sample(x0, index, (draws or GlobalBatchDraws()).randn_like(x0))
        return self.net(x_t, self.schedule.model_time(index).to(x0))

    def training_step(self, batch, batch_idx):
        x0, y = batch
        check_labels(y, self.num_classes)
        reseed_for_step(self.hparams.noise_seed, self.global_step)
        draws = global_batch_draws(self)
        index = None
        if self.hparams.noisy:
            lo, hi = self._index_range()
            index = draws.randint(lo, hi + 1, x0.shape[0], device=x0.device)
        logits = self.logits_at(x0, index, draws)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        check_finite_loss(loss, self.global_step)
        # global-batch values (mean of the ranks' means over equal shares), what one process would log
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        self.log("train/acc", (logits.argmax(1) == y).float().mean(), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x0, y = batch
        n = x0.shape[0]
        clean = self.net(x0, None if not self.hparams.noisy else torch.zeros(n, device=x0.device))
        self.log("val/acc_clean", (clean.argmax(1) == y).float().mean(), sync_dist=True, batch_size=n, prog_bar=True)
        if not self.hparams.noisy:
            self.log("val/loss", F.cross_entropy(clean, y), sync_dist=True, batch_size=n)
            return
        top = self.schedule.num_train_steps - 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(20_000 + batch_idx)
            losses = []
            for a, b in time_buckets(self.hparams.t_range, self.hparams.num_t_buckets):  # noised at each centre
                index = torch.full((n,), round((a + b) / 2 * top), device=x0.device)
                logits = self.logits_at(x0, index)
                losses.append(F.cross_entropy(logits, y))
                self.log(f"val/acc_{bucket_name((a, b))}", (logits.argmax(1) == y).float().mean(), sync_dist=True,
                         batch_size=n)
        self.log("val/loss", torch.stack(losses).mean(), sync_dist=True, batch_size=n)
