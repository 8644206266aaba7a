"""The self-attention of a diffusers network perturbed for one forward: perturbed-attention (identity attention
map), skip-layer and smoothed-energy (blurred queries) guidance on ``UNet2DModel`` and DiT, as
:class:`~.attention_perturbation.PerturbedAttention` does on the suite's UNet.

A perturbed diffusers ``Attention`` runs its own processor with ``scaled_dot_product_attention`` intercepted
(a ``TorchFunctionMode``, as diffusers' own layer-skip hooks do): ``"identity"`` returns the values (each position
keeps its own), ``"blur"`` blurs the queries over the image grid (:func:`~.blocks.blur_queries`; the grid is the
feature map of a UNet, the square patch grid of a DiT); ``"skip"`` makes the module add nothing (its residual input
as it is, or zeros where the block adds the residual itself, as DiT's blocks do).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .attention_perturbation import PerturbedAttention
from .blocks import blur_queries


def diffusers_self_attention(parts: list[nn.Module | None]) -> list[nn.Module]:
    """The self-attention modules (diffusers ``Attention`` that is not cross-attention) of ``parts``, in order."""
    found = []
    for part in parts:
        if part is not None:
            found += [m for m in part.modules() if type(m).__name__ == "Attention" and hasattr(m, "processor")
                      and not getattr(m, "is_cross_attention", False)]
    return found


class _AttentionOverride(TorchFunctionMode):
    """``scaled_dot_product_attention`` of a self-attention replaced by its values, or run on blurred queries."""

    def __init__(self, mode: str, grid: tuple[int, int], blur_sigma: float, blur_threshold_inf: float):
        super().__init__()
        self.mode, self.grid, self.blur_sigma, self.blur_threshold_inf = mode, grid, blur_sigma, blur_threshold_inf

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        args = list(args)
        names = ("query", "key", "value")
        q, _, v = (kwargs[n] if n in kwargs else args[i] for i, n in enumerate(names))
        if q.shape[-2] != v.shape[-2]:  # not a self-attention: left as it is
            return func(*args, **kwargs)
        if self.mode == "identity":
            return v
        blurred = blur_queries(q.reshape(-1, *q.shape[-2:]), self.grid, self.blur_sigma,
                               self.blur_threshold_inf).reshape(q.shape)
        if "query" in kwargs:
            kwargs["query"] = blurred
        else:
            args[0] = blurred
        return func(*args, **kwargs)


def _grid(hidden_states: Tensor) -> tuple[int, int]:
    """The image grid of an attention input: a UNet's (B, C, H, W) feature map, or a DiT's square token grid."""
    if hidden_states.ndim == 4:
        return int(hidden_states.shape[2]), int(hidden_states.shape[3])
    side = math.isqrt(int(hidden_states.shape[1]))
    if side * side != hidden_states.shape[1]:
        raise ValueError(f"{hidden_states.shape[1]} tokens are not a square grid: the blur needs the image grid")
    return side, side


class DiffusersPerturbedAttention(PerturbedAttention):
    """``net(x, t, y)`` of a diffusers adapter (``DiffusersUNet``, ``DiffusersDiT``) with the self-attention
    modules ``layers`` (indices into ``net.self_attention_layers()``; None = all) perturbed for the call."""

    @staticmethod
    def blocks_of(net: nn.Module) -> list[nn.Module]:
        return net.self_attention_layers()

    def perturb(self, block: nn.Module) -> None:
        original, mode = type(block).forward, self.mode
        sigma, threshold = self.blur_sigma, self.blur_threshold_inf

        def forward(hidden_states: Tensor, *args, **kwargs) -> Tensor:
            if mode == "skip":
                if block.residual_connection:
                    return hidden_states / block.rescale_output_factor
                return torch.zeros_like(hidden_states)
            with _AttentionOverride(mode, _grid(hidden_states), sigma, threshold):
                return original(block, hidden_states, *args, **kwargs)

        block.forward = forward

    def restore(self, block: nn.Module) -> None:
        vars(block).pop("forward", None)  # back to the class's forward
