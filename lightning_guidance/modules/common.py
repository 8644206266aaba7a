"""Pieces every LightningModule here shares: rebuilding from a checkpoint, per-step seeding, AdamW with linear
warm-up, finite-loss and data checks, and :class:`NetTrainingModule`, the base of the modules that train a net."""

from __future__ import annotations

import inspect
import warnings
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import Tensor, nn

from ..diffusion.noise import GlobalBatchDraws
from ..io.checkpoints import build_net, check_checkpoint_class, checkpoint_hparams, load_module_weights, read_checkpoint
from ..io.instantiate import nearest_name

def rebuild_from_checkpoint(cls, path: str | Path, net: nn.Module | None = None, use_ema: bool = True,
                            hint: str = ""):
    """An instance of LightningModule ``cls`` with the checkpoint's hyper-parameters and (EMA) weights, in eval mode.

    ``net``: the network, when the checkpoint does not record how to build it. The classmethods
    ``CFGDiffusion.from_checkpoint`` and ``Classifier.from_checkpoint`` call this."""
    path = Path(path)
    ckpt = read_checkpoint(path, hint)
    check_checkpoint_class(ckpt, path, cls)
    hp = checkpoint_hparams(ckpt)
    check_recorded_arguments(cls, hp, path)
    hp["net"] = build_net(ckpt, path, net)
    with _own_hyperparameters(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module` and is already saved")
        module = cls(**hp)
    return load_module_weights(module, ckpt, path, use_ema).eval()


def check_recorded_arguments(cls, hp: dict, path: Path) -> None:
    """Refuse in one line a checkpoint that records constructor arguments ``cls`` does not take (written by another
    version of the suite), naming each with the nearest argument ``cls`` has."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(hp) - set(params))
    if unknown:
        named = ", ".join(k + (f" (nearest: {near})" if (near := nearest_name(k, params)) else "") for k in unknown)
        raise ValueError(f"checkpoint {path} records arguments {cls.__name__} does not take: {named}; it was written "
                         "by another version of lightning-guidance: retrain it with this one")


@contextmanager
def _own_hyperparameters():
    """Build a LightningModule inside another one's LightningCLI instantiation without it inheriting the outer
    module's hyper-parameters (Lightning passes those through a context variable)."""
    token = _given_hyperparameters.set(None)
    try:
        yield
    finally:
        _given_hyperparameters.reset(token)


def compile_net(net: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """``net`` with its forward compiled by ``torch.compile`` (in place: the same module and state_dict keys).
    Refused in one line where it cannot work: on CPU, inductor builds C++ and needs a compiler."""
    import shutil

    if torch.device(device).type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        raise ValueError("compile: true needs a C++ compiler on CPU (torch.compile builds C++ kernels): install one "
                         "(Debian/Ubuntu: apt-get install g++) or set compile: false")
    net.compile()
    return net


def seed_for_step(seed: int, step: int) -> int:
    """A distinct, reproducible seed per (run seed, optimizer step); the same on every rank."""
    return (seed * 1_000_003 + step * 9_973) % (2**63 - 1)


def reseed_for_step(seed: int, step: int) -> None:
    """Reseed torch's RNG at each training step so that a resumed run draws exactly what a straight run draws
    (Lightning does not checkpoint RNG states). Every rank gets the same seed: each draws for the whole global batch
    and keeps its own rows (:class:`~lightning_guidance.diffusion.noise.GlobalBatchDraws`)."""
    torch.manual_seed(seed_for_step(seed, step))


def global_batch_draws(module) -> GlobalBatchDraws:
    """This rank's share of a training step's draws (one process when the module is used without a trainer)."""
    trainer = module._trainer
    if trainer is None:
        return GlobalBatchDraws()
    return GlobalBatchDraws(trainer.world_size, trainer.global_rank)


def adamw_with_warmup(params, lr: float, weight_decay: float, warmup_steps: int, betas=(0.9, 0.999)):
    """AdamW (Loshchilov & Hutter 2019) with a linear learning-rate warm-up over ``warmup_steps``."""
    if lr <= 0:
        raise ValueError(f"learning rate must be > 0, got {lr}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps else 1.0)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def check_finite_loss(loss: Tensor, step: int, what: str = "loss") -> Tensor:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{what} became {loss.item()} at training step {step}: lower the learning rate or "
                                 "check the data for NaNs; resume from the last good checkpoint with --ckpt_path last")
    return loss


def check_data_shape(net: nn.Module, data_shape, where: str) -> None:
    """Raise if the data's per-sample shape is not the one the network was built for."""
    expected = tuple(getattr(net, "data_shape", ()) or ())
    if expected and tuple(data_shape) != expected:
        raise ValueError(f"{where}: data has per-sample shape {tuple(data_shape)} but the network was built for "
                         f"{expected}; set the net's data_shape to match the data module")


def spec_only_hparams(checkpoint: dict, net: nn.Module) -> None:
    """A net passed as a Python object (not through the CLI) would be pickled into the hparams and break
    ``weights_only`` loading; keep only its class path (loading it then needs ``net`` given explicitly)."""
    hp = checkpoint.get("hyper_parameters", {})
    if isinstance(hp.get("net"), nn.Module):
        hp["net"] = {"class_path": f"{type(net).__module__}.{type(net).__qualname__}", "init_args": None}


def check_against_datamodule(module, where: str, check_classes: bool = True) -> None:
    """In ``setup``: the trainer's datamodule must have the data shape (and class count) the module's net was built for."""
    dm = getattr(module.trainer, "datamodule", None) if module._trainer is not None else None
    if dm is None or not hasattr(dm, "data_shape"):
        return
    check_data_shape(module.net, dm.data_shape, where)
    if check_classes and getattr(dm, "num_classes", module.num_classes) != module.num_classes:
        raise ValueError(f"{where}: data has {dm.num_classes} classes but the net was built for "
                         f"{module.num_classes}; set the net's num_classes to match")


class NetTrainingModule(L.LightningModule):
    """Base of the modules that train ``self.net`` from their hyper-parameters (``CFGDiffusion``, ``Classifier``,
    ``RectifiedFlowPostprocessor``): AdamW with linear warm-up over every parameter (hyper-parameters ``lr``,
    ``weight_decay``, ``warmup_steps``), and checkpoints that name the net by its spec (:func:`spec_only_hparams`)."""

    @property
    def num_classes(self) -> int:
        return int(self.net.num_classes)

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_with_warmup(self.parameters(), hp.lr, hp.weight_decay, hp.warmup_steps)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        spec_only_hparams(checkpoint, self.net)
