"""A network's forward with some of its self-attention layers perturbed: the "bad version" that perturbed-attention
guidance (Ahn et al. 2024: attention map -> identity) and skip-layer guidance (the block skipped) guide away from."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .blocks import AttentionBlock

PERTURBATIONS = ("identity", "skip")


def attention_blocks(net: nn.Module) -> list[AttentionBlock]:
    """The self-attention blocks of ``net`` in forward order (module registration order: down, middle, up)."""
    return [m for m in net.modules() if isinstance(m, AttentionBlock)]


class PerturbedAttention:
    """``net(x, t, y)`` with the attention blocks ``layers`` (indices into :func:`attention_blocks`; None = all)
    perturbed by ``mode`` for the length of the call; the network is untouched outside it."""

    def __init__(self, net: nn.Module, mode: str, layers: Sequence[int] | None = None):
        if mode not in PERTURBATIONS:
            raise ValueError(f"attention perturbation must be one of {PERTURBATIONS}, got {mode!r}")
        blocks = attention_blocks(net)
        if not blocks:
            raise ValueError(f"{type(net).__name__} has no self-attention layers for attention-perturbation guidance "
                             "to perturb (the toy MLPs have none; the UNet has one in its middle block unless "
                             "middle_attention=False): use another CFG rule")
        layers = list(range(len(blocks))) if layers is None else [int(i) for i in layers]
        bad = [i for i in layers if not -len(blocks) <= i < len(blocks)]
        if bad or not layers:
            raise ValueError(f"attention layers {layers} out of range: {type(net).__name__} has {len(blocks)} "
                             f"self-attention blocks (0..{len(blocks) - 1})")
        self.net, self.mode, self.blocks = net, mode, [blocks[i] for i in layers]

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        for block in self.blocks:
            block.perturbation = self.mode
        try:
            return self.net(x, t, y)
        finally:
            for block in self.blocks:
                block.perturbation = None
