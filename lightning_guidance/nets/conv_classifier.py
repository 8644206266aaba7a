"""A plain convolutional classifier of clean images (LeNet-like; LeCun et al. 1998), used as a second judge.

It shares nothing with the guidance classifiers (``EncoderClassifier``: residual blocks, GroupNorm, SiLU, a time
embedding, attention or average pooling) nor with the first judge (an MLP on flattened pixels): plain 3x3
convolutions with ReLU and max pooling, then two fully connected layers. Its features are the input of the last
layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from .embeddings import as_data_shape, check_input, check_num_classes


class ConvClassifier(nn.Module):
    """``forward(x, t=None) -> logits (B, num_classes)`` for clean images ``x`` (B, C, H, W); ``t`` must be None (or
    all zeros: clean), as this net has no time input.

    ``channels``: the width of each convolution stage; each stage is ``Conv3x3 -> ReLU`` and every stage after the
    first ends with a 2x2 max pool (H and W must divide by ``2 ** (len(channels) - 1)``). Then
    ``Flatten -> Linear(hidden) -> ReLU -> Dropout -> Linear(num_classes)``.
    """

    def __init__(self, data_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (16, 32, 64),
                 hidden_dim: int = 128, dropout: float = 0.0):
        super().__init__()
        self.data_shape = as_data_shape(data_shape)
        if len(self.data_shape) != 3:
            raise ValueError(f"ConvClassifier takes images (C, H, W), got data_shape {self.data_shape}")
        self.num_classes = check_num_classes(num_classes, "ConvClassifier")
        channels = [int(c) for c in channels]
        pools = 2 ** (len(channels) - 1)
        c, h, w = self.data_shape
        if not channels or h % pools or w % pools:
            raise ValueError(f"ConvClassifier with {len(channels)} stages halves H and W {len(channels) - 1} times: "
                             f"{h}x{w} must divide by {pools}")
        layers: list[nn.Module] = []
        for i, width in enumerate(channels):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU()]
            if i:
                layers.append(nn.MaxPool2d(2))
            c = width
        self.features = nn.Sequential(*layers, nn.Flatten(),
                                      nn.Linear(c * math.prod((h // pools, w // pools)), hidden_dim), nn.ReLU(),
                                      nn.Dropout(dropout))
        self.head = nn.Linear(hidden_dim, self.num_classes)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        check_input(x, self.data_shape, "ConvClassifier")
        if t is not None and bool((t != 0).any()):
            raise ValueError("ConvClassifier classifies clean images and has no time input; train it with "
                             "noisy: false (it is a judge or a clean guide, not a noisy classifier)")
        return self.head(self.features(x))
