"""Time-dependent (noisy) classifier: the ADM UNet's encoder half with a pooling head
(Dhariwal & Nichol 2021, §4.1; the design of guided-diffusion's ``EncoderUNetModel``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import AttentionPool2d, build_down_path, build_middle_block, check_image_config, group_norm, zero_init
from .embeddings import TimeEmbedding, as_data_shape, check_input, check_num_classes, check_time

POOLS = ("attention", "adaptive")


class EncoderClassifier(nn.Module):
    """``forward(x, t=None) -> logits (B, num_classes)`` of ``p(y | x_t, t)``; ``t=None`` means clean
    images (t = 0), so the same class serves as the clean twin.

    Time embedding, down path and middle block as in ``UNet`` (no class input), then the head:
    ``pool='adaptive'``: GroupNorm -> SiLU -> global average -> zero-initialised Linear (a fresh net gives
    uniform logits); ``pool='attention'``: GroupNorm -> SiLU -> attention pooling (CLIP-style, learned
    positional embedding over the final H*W grid) -> Linear. ``attention_resolutions`` are downsample
    rates, as in ``UNet``.
    """

    def __init__(self, data_shape: Sequence[int], num_classes: int, model_channels: int = 32,
                 num_res_blocks: int = 1, attention_resolutions: Sequence[int] = (),
                 channel_mult: Sequence[int] = (1, 2), dropout: float = 0.0, pool: str = "attention",
                 num_heads: int = 4, num_head_channels: int = -1, use_scale_shift_norm: bool = True,
                 resblock_updown: bool = False, middle_attention: bool = True):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; choose one of {POOLS}")
        self.data_shape = as_data_shape(data_shape)
        self.attention_resolutions = tuple(int(r) for r in attention_resolutions)
        self.channel_mult = tuple(int(m) for m in channel_mult)
        check_image_config(self.data_shape, self.channel_mult, num_res_blocks, self.attention_resolutions,
                           "EncoderClassifier")
        self.num_classes = check_num_classes(num_classes, "EncoderClassifier")
        self.model_channels = model_channels
        self.pool = pool
        emb_channels = 4 * model_channels
        self.time_embed = TimeEmbedding(model_channels, emb_channels)
        self.input_blocks, _, ch, ds = build_down_path(
            self.data_shape[0], model_channels, self.channel_mult, num_res_blocks, self.attention_resolutions,
            emb_channels, dropout, num_heads, num_head_channels, use_scale_shift_norm, resblock_updown)
        self.middle_block = build_middle_block(ch, emb_channels, dropout, num_heads, num_head_channels,
                                               use_scale_shift_norm, attention=middle_attention)
        self.out_norm = group_norm(ch)
        if pool == "adaptive":
            self.head: nn.Module = zero_init(nn.Linear(ch, self.num_classes))
        else:
            positions = (self.data_shape[1] // ds) * (self.data_shape[2] // ds)
            self.head = AttentionPool2d(positions, ch, self.num_classes, num_heads, num_head_channels)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        check_input(x, self.data_shape, "EncoderClassifier")
        emb = self.time_embed(check_time(t, x.shape[0], x.device, allow_none=True))
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
        h = F.silu(self.out_norm(self.middle_block(h, emb)))
        if self.pool == "adaptive":
            return self.head(h.mean(dim=(2, 3)))
        return self.head(h)
