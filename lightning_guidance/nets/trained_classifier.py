"""A classifier trained by this suite, rebuilt from its checkpoint file as a plain, frozen ``nn.Module``."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..io.checkpoints import build_net, checkpoint_hparams, load_module_weights, read_checkpoint


class TrainedClassifier(nn.Module):
    """A classifier trained by this suite, loaded from its checkpoint: ``forward(x, t=None) -> logits``.

    For YAML: ``classifier: {class_path: lightning_guidance.nets.TrainedClassifier,
    init_args: {checkpoint: runs/digits/classifier/checkpoints/last.ckpt}}``. The network is rebuilt from the spec
    the checkpoint records and given its (EMA) weights; ``noisy``, ``schedule_name`` and ``num_train_steps`` are the
    classifier's training settings (``Classifier``'s hyper-parameters). Frozen and always in eval mode.
    """

    def __init__(self, checkpoint: str, use_ema: bool = True):
        super().__init__()
        path = Path(checkpoint)
        ckpt = read_checkpoint(path, "train one first with: python cli.py fit --config configs/digits/classifier.yaml")
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

    def extra_repr(self) -> str:
        return f"use_ema={self.use_ema}"  # the weights file is named by its digest (guidance.sweep.describe_classifier)

    def train(self, mode: bool = True) -> TrainedClassifier:
        return super().train(False)  # a guide or judge never trains (BatchNorm/dropout stay in eval)

    def forward(self, x, t=None):
        return self.net(x, t)
