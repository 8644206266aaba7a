"""Load the suite's checkpoints safely (``weights_only=True``) and rebuild their modules from recorded configs."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .instantiate import instantiate, is_spec


def read_checkpoint(path: str | Path, hint: str = "") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        extra = f" ({hint})" if hint else ""
        raise FileNotFoundError(f"checkpoint not found: {path}{extra}")
    return torch.load(path, map_location="cpu", weights_only=True)


def _module_hparams(ckpt: dict, path: Path) -> dict[str, Any]:
    hp = dict(ckpt.get("hyper_parameters") or {})
    for key in ("_instantiator", "_class_path"):
        hp.pop(key, None)
    return hp


def build_net(ckpt: dict, path: Path, net: nn.Module | None = None, key: str = "net") -> nn.Module:
    """The network a checkpoint was trained with: given explicitly, or rebuilt from its recorded class-path spec."""
    if net is not None:
        return net
    spec = (ckpt.get("hyper_parameters") or {}).get(key)
    if not is_spec(spec) or spec.get("init_args") is None:
        raise ValueError(f"{path} does not record how to build its {key} (it was trained outside the CLI); "
                         f"pass `{key}:` with the same architecture")
    return instantiate(spec)


def load_module_weights(module: nn.Module, ckpt: dict, path: Path, use_ema: bool = True) -> nn.Module:
    """Load ``state_dict`` (EMA weights when the EMA callback was used) or the raw weights (``use_ema=False``)."""
    state = ckpt["state_dict"] if use_ema or "current_model_state" not in ckpt else ckpt["current_model_state"]
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match the network: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return module


def load_module(cls, path: str | Path, net: nn.Module | None = None, use_ema: bool = True, hint: str = ""):
    """An instance of LightningModule ``cls`` with the checkpoint's hyper-parameters and (EMA) weights, in eval mode."""
    path = Path(path)
    ckpt = read_checkpoint(path, hint)
    hp = _module_hparams(ckpt, path)
    hp["net"] = build_net(ckpt, path, net)
    with _own_hyperparameters(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module` and is already saved")
        module = cls(**hp)
    return load_module_weights(module, ckpt, path, use_ema).eval()


def load_cfg_diffusion(path: str | Path, net: nn.Module | None = None, use_ema: bool = True):
    """A :class:`CFGDiffusion` from its checkpoint (EMA weights by default)."""
    from ..modules.cfg_diffusion import CFGDiffusion

    return load_module(CFGDiffusion, path, net, use_ema,
                       "train one first with: python cli.py fit --config configs/digits/cfg.yaml")


def load_classifier(path: str | Path, net: nn.Module | None = None, use_ema: bool = True):
    """A :class:`NoisyClassifier` (noisy or clean twin) from its checkpoint, frozen."""
    from ..modules.noisy_classifier import NoisyClassifier

    module = load_module(NoisyClassifier, path, net, use_ema,
                         "train one first with: python cli.py fit --config configs/digits/classifier.yaml")
    return module.requires_grad_(False)


class TrainedClassifier(nn.Module):
    """A classifier trained by this suite, loaded from its checkpoint: ``forward(x, t=None) -> logits``.

    For YAML: ``classifier: {class_path: lightning_guidance.io.checkpoints.TrainedClassifier,
    init_args: {checkpoint: runs/digits/classifier/checkpoints/last.ckpt}}``. Frozen and always in eval mode.
    """

    def __init__(self, checkpoint: str, use_ema: bool = True):
        super().__init__()
        module = load_classifier(checkpoint, use_ema=use_ema)
        self.net = module.net
        self.checkpoint = str(checkpoint)
        self.num_classes = module.num_classes
        self.data_shape = tuple(getattr(module.net, "data_shape", ()))
        self.noisy = bool(module.hparams.noisy)
        self.schedule_name = module.hparams.schedule
        self.num_train_steps = module.hparams.num_train_steps
        self.eval()

    def train(self, mode: bool = True) -> "TrainedClassifier":
        return super().train(False)  # a guide or judge never trains (BatchNorm/dropout stay in eval)

    def forward(self, x, t=None):
        return self.net(x, t)


@contextmanager
def _own_hyperparameters():
    """Build a LightningModule inside another one's LightningCLI instantiation without it inheriting the outer
    module's hyper-parameters (Lightning passes those through a context variable)."""
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

    token = _given_hyperparameters.set(None)
    try:
        yield
    finally:
        _given_hyperparameters.reset(token)
