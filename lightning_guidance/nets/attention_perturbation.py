"""A network's forward with some of its self-attention layers perturbed: the "bad version" that perturbed-attention
guidance (Ahn et al. 2024: attention map -> identity), skip-layer guidance (the block skipped) and smoothed-energy
guidance (Hong 2024: the queries Gaussian-blurred) guide away from."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from ..diffusion.cfg_rule import ClassifierFreeGuidance
from .blocks import AttentionBlock

PERTURBATIONS = ("identity", "skip", "blur")


def attention_blocks(net: nn.Module) -> list[AttentionBlock]:
    """The self-attention blocks of ``net`` in forward order (module registration order: down, middle, up)."""
    return [m for m in net.modules() if isinstance(m, AttentionBlock)]


class PerturbedAttention:
    """``net(x, t, y)`` with the attention blocks ``layers`` (indices into :func:`attention_blocks`; None = all)
    perturbed by ``mode`` for the length of the call; the network is untouched outside it. ``"blur"`` blurs the
    queries with std ``blur_sigma`` (:func:`~.blocks.blur_queries`; above ``blur_threshold_inf``: the mean)."""

    def __init__(self, net: nn.Module, mode: str, layers: Sequence[int] | None = None, blur_sigma: float = 0.0,
                 blur_threshold_inf: float = math.inf):
        if mode not in PERTURBATIONS:
            raise ValueError(f"attention perturbation must be one of {PERTURBATIONS}, got {mode!r}")
        blocks = self.blocks_of(net)
        if not blocks:
            raise ValueError(f"{type(net).__name__} has no self-attention layers for attention-perturbation guidance "
                             "to perturb (the toy MLPs have none; the UNet has one in its middle block unless "
                             "middle_attention=False): use another CFG rule")
        layers = list(range(len(blocks))) if layers is None else [int(i) for i in layers]
        bad = [i for i in layers if not -len(blocks) <= i < len(blocks)]
        if bad or not layers:
            raise ValueError(f"attention layers {layers} out of range: {type(net).__name__} has {len(blocks)} "
                             f"self-attention blocks (0..{len(blocks) - 1})")
        if blur_sigma < 0:
            raise ValueError(f"blur_sigma must be >= 0 (0 = no blur), got {blur_sigma}")
        self.net, self.mode, self.blocks = net, mode, [blocks[i] for i in layers]
        self.blur_sigma, self.blur_threshold_inf = float(blur_sigma), float(blur_threshold_inf)

    @staticmethod
    def blocks_of(net: nn.Module) -> list[nn.Module]:
        """The self-attention blocks this perturbation can act on, in forward order."""
        return attention_blocks(net)

    @classmethod
    def for_rule(cls, net: nn.Module, rule: ClassifierFreeGuidance) -> "PerturbedAttention":
        """The perturbed network a CFG rule with a ``perturbation`` reads (refuses a net without those layers); a net
        of another family names its own kind of perturbation (``perturbed_attention``, e.g. diffusers models)."""
        kind = getattr(net, "perturbed_attention", cls)
        return kind(net, rule.perturbation, rule.layers, **rule.perturbation_options())

    def perturb(self, block: nn.Module) -> None:
        block.perturbation = self.mode
        block.blur_sigma, block.blur_threshold_inf = self.blur_sigma, self.blur_threshold_inf

    def restore(self, block: nn.Module) -> None:
        block.perturbation = None
        vars(block).pop("blur_sigma", None)  # back to the class defaults
        vars(block).pop("blur_threshold_inf", None)

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        for block in self.blocks:
            self.perturb(block)
        try:
            return self.net(x, t, y)
        finally:
            for block in self.blocks:
                self.restore(block)
