"""Find a classifier's class layer: the layer whose input is the feature vector and whose output the logits."""

from __future__ import annotations

from torch import nn


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


def head_in_features(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.in_features
    if isinstance(layer, nn.Conv1d):
        return layer.in_channels
    raise ValueError(f"cannot tell the feature size of a {type(layer).__name__}; use an nn.Linear or 1x1 nn.Conv1d")
