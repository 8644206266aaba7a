"""Time-dependent classifiers on flattened inputs: the classifier-centric study's linear classifier on
``[x, t]`` and its nonlinear (MLP) classifier (Zhao & Schwing 2025, App. D.3.1, D.4.3, D.5.2).

Both take ``forward(x, t=None)``; ``t=None`` means clean data (t = 0), so each class is its own clean twin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .embeddings import as_data_shape, check_input, check_num_classes, check_time
from .mlp import MLPBody


class LinearClassifier(nn.Module):
    """``logits = W [flatten(x), t] + b``: one ``nn.Linear`` on the flattened input concatenated with the
    continuous time t in [0, 1] (the study feeds the diffusion step; t is that step rescaled)."""

    def __init__(self, data_shape: int | Sequence[int], num_classes: int):
        super().__init__()
        self.data_shape = as_data_shape(data_shape)
        self.num_classes = check_num_classes(num_classes, "LinearClassifier")
        self.linear = nn.Linear(math.prod(self.data_shape) + 1, self.num_classes)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        check_input(x, self.data_shape, "LinearClassifier")
        t = check_time(t, x.shape[0], x.device, allow_none=True).to(x.dtype)
        return self.linear(torch.cat([x.flatten(1), t[:, None]], dim=1))


class MLPClassifier(nn.Module):
    """``logits = Linear(body(flatten(x), t))``: the toy denoiser's residual MLP body with its time
    embedding and no class embedding (the study's nonlinear classifier)."""

    def __init__(self, data_shape: int | Sequence[int], num_classes: int, hidden_dim: int = 256,
                 num_layers: int = 3, time_embed_dim: int = 64, dropout: float = 0.0):
        super().__init__()
        self.data_shape = as_data_shape(data_shape)
        self.num_classes = check_num_classes(num_classes, "MLPClassifier")
        self.body = MLPBody(math.prod(self.data_shape), hidden_dim, num_layers, time_embed_dim, dropout)
        self.head = nn.Linear(hidden_dim, self.num_classes)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        check_input(x, self.data_shape, "MLPClassifier")
        t = check_time(t, x.shape[0], x.device, allow_none=True)
        return self.head(self.body(x.flatten(1), t))
