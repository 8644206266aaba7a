"""How time and class enter the networks: the sinusoidal time embedding, the class table with its null
entry, and the checks every network runs on ``x``, ``t`` and ``y`` before its forward.

Time convention: networks take continuous time ``t`` in [0, 1] (``VPSchedule.model_time``). The sinusoid is
applied to ``1000 t`` so that the frequencies are those of ADM/DDPM's integer step index with T = 1000,
whatever T the schedule was trained with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

TIME_SCALE = 1000.0  # t in [0, 1] -> the 0..1000 range the ADM/DDPM frequencies were designed for


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """``[cos(1000 t w_k), sin(1000 t w_k)]`` with ``w_k = max_period^(-k/h)``, ``k < h = dim // 2``.

    The Transformer sinusoid (Vaswani et al. 2017, §3.5) in the cos-first order of DDPM/ADM
    (Dhariwal & Nichol 2021); an odd ``dim`` gets one zero column. Equals diffusers'
    ``get_timestep_embedding(1000 t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)``.
    Computed in float32 (float64 if ``t`` is float64); shape (B, dim).
    """
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding expects t of shape (B,), got {tuple(t.shape)}")
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    half = dim // 2
    k = torch.arange(half, dtype=dtype, device=t.device)
    freqs = torch.exp(-math.log(max_period) * k / half)
    angles = (TIME_SCALE * t.to(dtype))[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


class TimeEmbedding(nn.Module):
    """ADM's time MLP: sinusoid(t, ``freq_dim``) -> Linear -> SiLU -> Linear, to ``out_dim`` features."""

    def __init__(self, freq_dim: int, out_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: Tensor) -> Tensor:
        weight = self.mlp[0].weight
        return self.mlp(timestep_embedding(t, self.freq_dim).to(weight.dtype))


class ClassEmbedding(nn.Module):
    """``num_classes + 1`` learned vectors; the last one (id ``num_classes``) is the null class of CFG
    (Ho & Salimans 2021). ``y=None`` means "no label": every sample gets the null class, which also
    makes ``num_classes=0`` an unconditional network."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = unconditional), got {num_classes}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def forward(self, y: Tensor | None, batch_size: int) -> Tensor:
        if y is None:
            y = torch.full((batch_size,), self.null_class, dtype=torch.long, device=self.table.weight.device)
        if tuple(y.shape) != (batch_size,):
            raise ValueError(f"class ids must have shape ({batch_size},) to match x, got {tuple(y.shape)}")
        check_class_ids(y, self.num_classes)
        return self.table(y.long())


# ---- input checks shared by every network ----------------------------------------------------------


def check_class_ids(y: Tensor, num_classes: int) -> None:
    """Raise unless ``y`` holds integer class ids in ``0..num_classes`` (``num_classes`` is the null class)."""
    if y.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"class labels must be an integer tensor, got {y.dtype}")
    outside = (y < 0) | (y > num_classes)
    if y.numel() and bool(outside.any()):
        raise ValueError(f"class ids {y[outside].unique().tolist()} out of range: this network knows classes "
                         f"0..{num_classes - 1} and the null class {num_classes}")


def as_data_shape(data_shape: int | Sequence[int]) -> tuple[int, ...]:
    """Accept ``2`` or ``(2,)`` or ``(1, 8, 8)``; return a tuple of positive ints."""
    shape = (int(data_shape),) if isinstance(data_shape, int) else tuple(int(s) for s in data_shape)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"data_shape must be a non-empty tuple of positive sizes, e.g. (2,) or (1, 8, 8); "
                         f"got {data_shape}")
    return shape


def check_input(x: Tensor, data_shape: tuple[int, ...], net_name: str) -> None:
    """Raise if ``x`` is not a batch ``(B, *data_shape)``."""
    if tuple(x.shape[1:]) != tuple(data_shape) or x.ndim != len(data_shape) + 1:
        raise ValueError(
            f"{net_name} was built for inputs of shape (B, {', '.join(map(str, data_shape))}), got {tuple(x.shape)}; "
            f"build it with data_shape={tuple(x.shape[1:])} or resize the data"
        )
    if not x.is_floating_point():
        raise TypeError(f"{net_name} expects a floating-point input, got {x.dtype}")


def check_time(t: Tensor | float | None, batch_size: int, device: torch.device, allow_none: bool = False) -> Tensor:
    """Return ``t`` as a float tensor (B,). A scalar is broadcast; ``None`` (classifiers only) means clean, t = 0.

    The range [0, 1] is not checked (that would cost a device sync per forward); integer tensors are refused
    because they are almost always step indices (convert them with ``VPSchedule.model_time``).
    """
    if t is None:
        if not allow_none:
            raise ValueError("this network needs the time t (float tensor (B,) in [0, 1])")
        return torch.zeros(batch_size, device=device)
    t = torch.as_tensor(t, device=device)
    if not t.is_floating_point():
        raise TypeError(f"t must be continuous time in [0, 1] (a float tensor), got {t.dtype}; "
                        "convert step indices with VPSchedule.model_time")
    if t.ndim == 0:
        t = t.expand(batch_size)
    if tuple(t.shape) != (batch_size,):
        raise ValueError(f"t must have shape ({batch_size},) to match x, got {tuple(t.shape)}")
    return t


def check_num_classes(num_classes: int, net_name: str) -> int:
    """Classifiers need at least two classes."""
    if int(num_classes) < 2:
        raise ValueError(f"{net_name} needs num_classes >= 2, got {num_classes}")
    return int(num_classes)
