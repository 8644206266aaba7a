"""Residual MLPs for the 1D/2D toy data (the classifier-centric study's toy models, Zhao & Schwing 2025,
App. D.3/D.4: one body with a time embedding; a class embedding for the denoiser, none for the classifier)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import zero_init
from .embeddings import ClassEmbedding, TimeEmbedding, as_data_shape, check_input, check_time


class ResidualMLPBlock(nn.Module):
    """``h + W2 SiLU(W1 SiLU(LN(h)) + P SiLU(c))``: pre-norm residual block with the conditioning ``c``
    (time, plus class for the denoiser) added inside every block."""

    def __init__(self, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim)
        self.fc1 = nn.Linear(hidden_dim, hidden_dim)
        self.cond_proj = nn.Linear(hidden_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        z = self.fc1(F.silu(self.norm(h))) + self.cond_proj(F.silu(cond))
        return h + self.fc2(self.dropout(F.silu(z)))


class MLPBody(nn.Module):
    """``x (B, in_dim)`` -> Linear -> ``num_layers`` residual blocks conditioned on ``MLP(sinusoid(1000 t))``
    (+ any extra conditioning of width ``hidden_dim``) -> LayerNorm -> SiLU: features (B, hidden_dim)."""

    def __init__(self, in_dim: int, hidden_dim: int, num_layers: int, time_embed_dim: int, dropout: float = 0.0):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.in_proj = nn.Linear(in_dim, hidden_dim)
        self.time_embed = TimeEmbedding(time_embed_dim, hidden_dim)
        self.blocks = nn.ModuleList(ResidualMLPBlock(hidden_dim, dropout) for _ in range(num_layers))
        self.out_norm = nn.LayerNorm(hidden_dim)

    def forward(self, x: Tensor, t: Tensor, extra_cond: Tensor | None = None) -> Tensor:
        cond = self.time_embed(t)
        if extra_cond is not None:
            cond = cond + extra_cond
        h = self.in_proj(x)
        for block in self.blocks:
            h = block(h, cond)
        return F.silu(self.out_norm(h))


class MLPDenoiser(nn.Module):
    """``forward(x, t, y) -> (B, data_dim)``: the prediction (eps, x0 or v) for toy data ``x`` (B, data_dim).

    Conditioning ``MLP(sinusoid(1000 t)) + Linear(class_table[y])`` enters every residual block;
    ``num_classes + 1`` class vectors, the last the CFG null class (``y=None`` = null; ``num_classes=0`` =
    unconditional). The output layer is zero-initialised (a fresh net predicts 0), like ADM's.
    """

    def __init__(self, data_dim: int, num_classes: int, hidden_dim: int = 256, num_layers: int = 4,
                 time_embed_dim: int = 64, class_embed_dim: int = 64, dropout: float = 0.0):
        super().__init__()
        self.data_shape = as_data_shape(data_dim)
        if len(self.data_shape) != 1:
            raise ValueError(f"MLPDenoiser takes flat data: data_dim must be an int, got {data_dim}")
        self.data_dim = self.data_shape[0]
        self.num_classes = int(num_classes)
        self.body = MLPBody(self.data_dim, hidden_dim, num_layers, time_embed_dim, dropout)
        self.class_embed = ClassEmbedding(self.num_classes, class_embed_dim)
        self.class_proj = nn.Linear(class_embed_dim, hidden_dim)
        self.out = zero_init(nn.Linear(hidden_dim, self.data_dim))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        check_input(x, self.data_shape, "MLPDenoiser")
        t = check_time(t, x.shape[0], x.device)
        class_cond = self.class_proj(self.class_embed(y, x.shape[0]))
        return self.out(self.body(x, t, class_cond))
