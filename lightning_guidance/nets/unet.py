"""ADM UNet (Dhariwal & Nichol 2021, §3 and App. A; the design of guided-diffusion's ``UNetModel``),
class-conditional with a null class for classifier-free guidance."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import (AttentionBlock, EmbedSequential, ResBlock, Upsample, build_down_path, build_middle_block,
                     check_image_config, group_norm, zero_init)
from .embeddings import ClassEmbedding, TimeEmbedding, as_data_shape, check_input, check_time


class UNet(nn.Module):
    """``forward(x, t, y) -> (B, out_channels, H, W)``: the prediction (eps, x0 or v) for ``x`` (B, C, H, W)
    at continuous time ``t`` (B,) in [0, 1] and class ids ``y`` (B,) (``num_classes`` = the null class;
    ``y=None`` = null for every sample).

    Embedding: ``emb = MLP(sinusoid(1000 t)) + class_table[y]``, ``4 * model_channels`` wide. Down path:
    per level ``num_res_blocks`` ResBlocks at ``model_channels * channel_mult[level]`` channels, a
    downsample between levels; middle: ResBlock, attention, ResBlock; up path mirrors it with
    ``num_res_blocks + 1`` ResBlocks per level, each fed the matching skip connection.
    ``attention_resolutions`` are **downsample rates** (guided-diffusion's internal convention): ``(2,)``
    puts self-attention in every block at half resolution, ``()`` only in the middle block
    (``middle_attention=False`` removes that one too). The output conv (and every residual branch) is
    zero-initialised, so a fresh UNet outputs exactly 0. ``out_channels`` defaults to C (2C would be
    ADM's learned-variance output).
    """

    def __init__(self, data_shape: Sequence[int], num_classes: int, model_channels: int = 64,
                 num_res_blocks: int = 2, attention_resolutions: Sequence[int] = (),
                 channel_mult: Sequence[int] = (1, 2), dropout: float = 0.0, num_heads: int = 4,
                 num_head_channels: int = -1, use_scale_shift_norm: bool = True, resblock_updown: bool = False,
                 out_channels: int | None = None, middle_attention: bool = True):
        super().__init__()
        self.data_shape = as_data_shape(data_shape)
        self.attention_resolutions = tuple(int(r) for r in attention_resolutions)
        self.channel_mult = tuple(int(m) for m in channel_mult)
        check_image_config(self.data_shape, self.channel_mult, num_res_blocks, self.attention_resolutions, "UNet")
        self.num_classes = int(num_classes)
        self.model_channels = model_channels
        self.num_res_blocks = num_res_blocks
        in_channels = self.data_shape[0]
        self.out_channels = out_channels or in_channels
        emb_channels = 4 * model_channels
        self.time_embed = TimeEmbedding(model_channels, emb_channels)
        self.class_embed = ClassEmbedding(self.num_classes, emb_channels)
        attn = dict(num_heads=num_heads, num_head_channels=num_head_channels)

        self.input_blocks, skip_channels, ch, ds = build_down_path(
            in_channels, model_channels, self.channel_mult, num_res_blocks, self.attention_resolutions,
            emb_channels, dropout, num_heads, num_head_channels, use_scale_shift_norm, resblock_updown)
        self.middle_block = build_middle_block(ch, emb_channels, dropout, num_heads, num_head_channels,
                                               use_scale_shift_norm, attention=middle_attention)
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(num_res_blocks + 1):
                layers: list[nn.Module] = [ResBlock(ch + skip_channels.pop(), emb_channels, model_channels * mult,
                                                    dropout, use_scale_shift_norm)]
                ch = model_channels * mult
                if ds in self.attention_resolutions:
                    layers.append(AttentionBlock(ch, **attn))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, emb_channels, ch, dropout, use_scale_shift_norm, up=True)
                                  if resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        self.out_norm = group_norm(ch)
        self.out_conv = zero_init(nn.Conv2d(ch, self.out_channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        check_input(x, self.data_shape, "UNet")
        t = check_time(t, x.shape[0], x.device)
        emb = self.time_embed(t) + self.class_embed(y, x.shape[0])
        h = x
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out_conv(F.silu(self.out_norm(h)))
