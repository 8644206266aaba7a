"""The judge: a clean classifier trained by the suite only to grade samples, read at its logits and at its
penultimate features (the input of its last class layer).

The judge must differ (architecture and seed) from every classifier used for guidance, or guidance is graded by its
own teacher (MATH.md §6). Its features span the space of the Fréchet distance ``fd_<dataset>`` and of
precision/recall; its logits give conditional accuracy and the classifier score.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from ..io.checkpoints import TrainedClassifier


def classifier_head(classifier: nn.Module, num_classes: int, name: str | None = None) -> tuple[str, nn.Module]:
    """``(name, module)`` of the layer that maps features to class logits: the one named ``name``, or the last
    ``nn.Linear`` (or 1×1 ``nn.Conv1d``, as in attention pooling) whose output size is ``num_classes``."""
    modules = dict(classifier.named_modules())
    if name is not None:
        if name not in modules:
            raise ValueError(f"{type(classifier).__name__} has no submodule {name!r}; "
                             f"it has: {', '.join(n for n in modules if n)}")
        return name, modules[name]
    found = None
    for n, m in modules.items():
        linear = isinstance(m, nn.Linear) and m.out_features == num_classes
        pointwise = isinstance(m, nn.Conv1d) and m.out_channels == num_classes and m.kernel_size == (1,)
        if linear or pointwise:
            found = (n, m)
    if found is None:
        raise ValueError(f"{type(classifier).__name__} has no nn.Linear / 1x1 nn.Conv1d with {num_classes} outputs; "
                         "name its class layer with feature_layer=...")
    return found


def _in_features(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.in_features
    if isinstance(layer, nn.Conv1d):
        return layer.in_channels
    raise ValueError(f"cannot tell the feature size of a {type(layer).__name__}; use an nn.Linear or 1x1 nn.Conv1d")


class Judge(nn.Module):
    """``forward(x) -> features (B, num_features)``; :meth:`logits_and_features` gives both from one forward.

    ``checkpoint``: a classifier trained by the suite with ``noisy: false`` (loaded as ``TrainedClassifier``), or
    ``classifier``: any clean ``nn.Module`` with ``forward(x, t=None) -> logits`` and ``num_classes``.
    ``feature_layer``: the class layer whose input is the feature vector (found automatically by default).
    Frozen and always in eval mode. For YAML: ``judge: {class_path: lightning_guidance.evaluation.judge.Judge,
    init_args: {checkpoint: runs/digits/judge/checkpoints/last.ckpt}}``.
    """

    def __init__(self, checkpoint: str | None = None, classifier: nn.Module | None = None,
                 feature_layer: str | None = None, use_ema: bool = True):
        super().__init__()
        if (checkpoint is None) == (classifier is None):
            raise ValueError("give the judge exactly one of checkpoint= (a classifier trained with noisy: false) "
                             "or classifier=")
        if checkpoint is not None:
            if not Path(checkpoint).is_file():
                raise FileNotFoundError(f"judge checkpoint not found: {checkpoint} (train the judge first with: "
                                        "python cli.py fit --config configs/digits/judge.yaml)")
            classifier = TrainedClassifier(checkpoint, use_ema=use_ema)
            if classifier.noisy:
                raise ValueError(f"the judge {checkpoint} is a noisy (time-dependent) classifier; a judge is trained on "
                                 "clean data: fit one with configs/digits/judge.yaml (NoisyClassifier noisy: false)")
        num_classes = getattr(classifier, "num_classes", None)
        if not isinstance(num_classes, int):
            raise TypeError(f"the judge {type(classifier).__name__} needs an int attribute num_classes")
        self.classifier = classifier.requires_grad_(False)
        self.checkpoint = None if checkpoint is None else str(Path(checkpoint))
        self.num_classes = num_classes
        self.data_shape = tuple(getattr(classifier, "data_shape", ()) or ())
        self.feature_layer, layer = classifier_head(classifier, num_classes, feature_layer)
        self.num_features = _in_features(layer)
        self._layer = [layer]  # a plain list: not registered twice as a submodule
        self.eval()

    def train(self, mode: bool = True) -> Judge:
        return super().train(False)  # a judge never trains (no dropout, no batch-norm updates)

    def logits_and_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Clean logits (B, num_classes) and the class layer's input, flattened to (B, num_features)."""
        captured: list[Tensor] = []
        hook = self._layer[0].register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
        try:
            logits = self.classifier(x, None)
        finally:
            hook.remove()
        if len(captured) != 1:
            raise RuntimeError(f"the judge's class layer {self.feature_layer!r} ran {len(captured)} times in one "
                               "forward; name the layer whose input is the feature vector with feature_layer=")
        return logits, captured[0].flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits_and_features(x)[1]
