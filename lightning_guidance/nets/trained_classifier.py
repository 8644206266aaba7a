"""A classifier trained by this suite, rebuilt from its checkpoint file as a plain, frozen ``nn.Module``."""

from __future__ import annotations

import math
from pathlib import Path

from torch import nn

from ..io.checkpoints import (build_net, check_checkpoint_class, checkpoint_hparams, load_module_weights,
                              read_checkpoint)

#: the module class whose checkpoints hold a classifier (its subclasses too; a calibrated export records it)
CLASSIFIER_MODULE = "lightning_guidance.modules.classifier.Classifier"


class TrainedClassifier(nn.Module):
    """A classifier trained by this suite, loaded from its checkpoint: ``forward(x, t=None) -> logits``.

    For YAML: ``classifier: {class_path: lightning_guidance.nets.TrainedClassifier,
    init_args: {checkpoint: runs/digits/classifier/checkpoints/last.ckpt}}``. The network is rebuilt from the spec
    the checkpoint records and given its (EMA) weights; ``noisy``, ``schedule_name`` and ``num_train_steps`` are the
    classifier's training settings (``Classifier``'s hyper-parameters). Frozen and always in eval mode.

    ``temperature`` T: the logits are divided by T (temperature scaling, Guo et al. 2017, §4.2): T > 1 softens,
    T < 1 sharpens the probabilities without changing the arg max, so one classifier gives many calibration levels.
    It is part of the guide's identity (``extra_repr``, which the shard hash reads) when it is not 1; so are the raw
    weights (``use_ema: false``).
    """

    def __init__(self, checkpoint: str, use_ema: bool = True, temperature: float = 1.0):
        super().__init__()
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.temperature = float(temperature)
        path = Path(checkpoint)
        ckpt = read_checkpoint(path, "train one first with: python cli.py fit --config configs/<data>/classifier.yaml")
        # a diffusion model (or anything else) given as a classifier is refused here, naming its class
        check_checkpoint_class(ckpt, path, CLASSIFIER_MODULE, "classifier checkpoint")
        hp = checkpoint_hparams(ckpt)
        net = build_net(ckpt, path)
        if not hasattr(net, "num_classes"):
            raise ValueError(f"{path} holds a {type(net).__name__}, which has no num_classes: not a classifier")
        self.net = load_module_weights(net, ckpt, path, use_ema, prefix="net.").requires_grad_(False)
        self.checkpoint, self.use_ema = str(checkpoint), bool(use_ema)
        self.num_classes = int(net.num_classes)
        self.data_shape = tuple(getattr(net, "data_shape", ()))
        self.noisy = bool(hp.get("noisy", True))
        self.schedule_name = hp.get("schedule", "linear")
        self.num_train_steps = hp.get("num_train_steps", 1000)
        self.eval()

    def train(self, mode: bool = True) -> TrainedClassifier:
        return super().train(False)  # a guide or judge never trains (BatchNorm/dropout stay in eval)

    def extra_repr(self) -> str:
        """The settings that change the logits, where they differ from the defaults (so a default guide's identity
        stays what it was before each option existed); the weights file is named by its digest
        (``guidance.sweep.describe_classifier``)."""
        return ", ".join([*([] if self.use_ema else ["use_ema=False"]),
                          *([] if self.temperature == 1.0 else [f"temperature={self.temperature!r}"])])

    def forward(self, x, t=None):
        logits = self.net(x, t)
        return logits if self.temperature == 1.0 else logits / self.temperature
