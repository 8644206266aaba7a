"""The judge: a clean classifier trained by the suite only to grade samples, read at its logits and at its
penultimate features (the input of its last class layer).

The judge must differ (architecture and seed) from every classifier used for guidance, or guidance is graded by its
own teacher (docs/math.md §6). Its features span the space of the Fréchet distance ``fd_<dataset>`` and of
precision/recall; its logits give conditional accuracy and the classifier score.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor, nn

from ..io.checkpoints import config_that_writes
from ..nets.classifier_head import classifier_head, head_in_features
from ..nets.trained_classifier import TrainedClassifier


class Judge(nn.Module):
    """``forward(x) -> features (B, num_features)``; :meth:`logits_and_features` gives both from one forward.

    ``checkpoint``: a classifier trained by the suite with ``noisy: false`` (loaded as ``TrainedClassifier``), or
    ``classifier``: any clean ``nn.Module`` with ``forward(x, t=None) -> logits`` and ``num_classes``.
    ``feature_layer``: the class layer whose input is the feature vector (found automatically by default).
    Frozen and always in eval mode. For YAML: ``judge: {class_path: lightning_guidance.metrics.judge.Judge,
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
                config = config_that_writes(checkpoint) or "configs/<data>/judge.yaml"
                raise FileNotFoundError(f"judge checkpoint not found: {checkpoint} (train the judge first with: "
                                        f"python cli.py fit --config {config})")
            try:
                classifier = TrainedClassifier(checkpoint, use_ema=use_ema)
            except ValueError as err:  # e.g. a diffusion checkpoint: the line names its true class
                raise ValueError(f"the judge's {err}") from None
            if classifier.noisy:
                raise ValueError(f"the judge {checkpoint} is a noisy (time-dependent) classifier; a judge is trained on "
                                 "clean data: fit one with configs/digits/judge.yaml (Classifier noisy: false)")
        num_classes = getattr(classifier, "num_classes", None)
        if not isinstance(num_classes, int):
            raise TypeError(f"the judge {type(classifier).__name__} needs an int attribute num_classes")
        self.classifier = classifier.requires_grad_(False)
        self.checkpoint = None if checkpoint is None else str(Path(checkpoint))
        self.num_classes = num_classes
        self.data_shape = tuple(getattr(classifier, "data_shape", ()) or ())
        self.feature_layer, layer = classifier_head(classifier, num_classes, feature_layer)
        self.num_features = head_in_features(layer)
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


def check_judge(judge: Judge, data_classes: int, model_classes: int, terms: Sequence = ()) -> None:
    """The judge, the real data and the diffusion model must know the same classes, and the judge must not be the
    classifier of a guidance term (guidance would be graded by its own teacher)."""
    if judge.num_classes != data_classes or model_classes != data_classes:
        raise ValueError(f"class counts disagree: real data {data_classes}, diffusion model {model_classes}, "
                         f"judge {judge.num_classes}; judge with a classifier trained on the same dataset")
    judge_ckpt = getattr(judge, "checkpoint", None)
    for term in terms:
        guide_ckpt = getattr(getattr(term, "classifier", None), "checkpoint", None)
        if judge_ckpt and guide_ckpt and Path(guide_ckpt).resolve() == Path(judge_ckpt).resolve():
            raise ValueError(f"the judge {judge_ckpt} is also the classifier of {type(term).__name__}: guidance "
                             "would be graded by its own teacher; train a separate judge (configs/digits/judge.yaml)")
