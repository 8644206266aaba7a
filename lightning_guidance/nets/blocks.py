"""Building blocks of the ADM UNet and its encoder (Dhariwal & Nichol 2021, §3 and App. A; design of
guided-diffusion's ``UNetModel``/``EncoderUNetModel``): GroupNorm, residual blocks conditioned on an
embedding through scale-shift norm, spatial self-attention, resampling, attention pooling, and the down
path / middle block shared by ``UNet`` and ``EncoderClassifier``.

Layouts are 2D (NCHW). ``ds`` is the downsample rate of a level: 1 at full resolution, 2 at half, ...
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_GROUPS = 32


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups as in ADM; fewer (the largest divisor of ``channels`` below 32) for narrow layers."""
    groups = max(g for g in range(1, MAX_GROUPS + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero every parameter: the residual branch starts as the identity and the output head as 0 (ADM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def num_attention_heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    """ADM's rule: ``channels // num_head_channels`` heads if that is set (!= -1), else ``num_heads``."""
    if num_head_channels == -1:
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"attention over {channels} channels cannot be split into num_heads={num_heads} heads; "
                             "pick a divisor of the channel count or set num_head_channels")
        return num_heads
    if num_head_channels < 1 or channels % num_head_channels:
        raise ValueError(f"attention over {channels} channels cannot be split into heads of num_head_channels="
                         f"{num_head_channels}; pick a divisor of the channel count")
    return channels // num_head_channels


class EmbedSequential(nn.Sequential):
    """A sequence whose residual blocks also receive the (time + class) embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Downsample(nn.Module):
    """Halve H and W: 3x3 conv with stride 2 (``use_conv``) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool = True):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour interpolation, then a 3x3 conv if ``use_conv``."""

    def __init__(self, channels: int, use_conv: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class ResBlock(nn.Module):
    """``skip(x) + conv(dropout(SiLU(norm(h) * (1 + scale) + shift))))`` with ``h = conv(SiLU(norm(x)))`` and
    ``(scale, shift) = Linear(SiLU(emb))`` (ADM's adaptive group norm, Dhariwal & Nichol 2021 §3); without
    ``use_scale_shift_norm`` the embedding is added to ``h`` instead. The last conv is zero-initialised, so a
    fresh block is ``skip(x)``. ``up``/``down`` resample inside the block (BigGAN-style, ``resblock_updown``).
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 use_scale_shift_norm: bool = True, up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_norm = group_norm(channels)
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        if up:
            self.resample = Upsample(channels, use_conv=False)
        elif down:
            self.resample = Downsample(channels, use_conv=False)
        else:
            self.resample = nn.Identity()
        self.emb_proj = nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        self.out_norm = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        # resample after the activation and before the conv, and the skip path the same way
        h = self.in_conv(self.resample(F.silu(self.in_norm(x))))
        x = self.resample(x)
        e = self.emb_proj(F.silu(emb)).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """``x + proj(MHA(norm(x)))``: multi-head self-attention over the H*W positions (ADM), no positional code.

    ``qkv`` is a 1x1 conv to 3C channels laid out head by head, ``[q_1 k_1 v_1 q_2 k_2 v_2 ...]``, each of
    C / heads channels; softmax scale 1/sqrt(C / heads). ``proj`` is zero-initialised (fresh block = identity).

    ``perturbation`` (set only for the length of one guided forward, see :mod:`.attention_perturbation`):
    ``"identity"`` replaces the attention map by the identity, so each position keeps its own value (perturbed-
    attention guidance, Ahn et al. 2024); ``"skip"`` makes the block add nothing (skip-layer guidance); ``"blur"``
    blurs the queries over the H x W grid with :func:`blur_queries` at ``blur_sigma`` (smoothed-energy guidance).
    """

    perturbation: str | None = None
    blur_sigma: float = 0.0
    blur_threshold_inf: float = math.inf

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1):
        super().__init__()
        self.num_heads = num_attention_heads(channels, num_heads, num_head_channels)
        self.norm = group_norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.perturbation == "skip":
            return x
        b, c, *spatial = x.shape
        tokens = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(tokens))  # (B, 3C, N)
        qkv = qkv.reshape(b, self.num_heads, 3, c // self.num_heads, -1).transpose(-1, -2)  # (B, heads, 3, N, d)
        q, k, v = qkv.unbind(dim=2)
        if self.perturbation == "blur":  # each head's queries, (B heads, N, d), blurred over the positions
            q = blur_queries(q.reshape(-1, *q.shape[2:]), spatial, self.blur_sigma,
                             self.blur_threshold_inf).reshape(q.shape)
        # (B, heads, N, d); an identity attention map leaves each position its own value
        attended = v if self.perturbation == "identity" else F.scaled_dot_product_attention(q, k, v)
        attended = attended.transpose(-1, -2).reshape(b, c, -1)
        return x + self.proj(attended).reshape(b, c, *spatial)


def gaussian_kernel_1d(sigma: float, size: int, like: Tensor) -> Tensor:
    """The normalised Gaussian ``exp(-x^2 / (2 sigma^2))`` at the ``size`` integer offsets centred on 0 (size odd)."""
    half = (size - 1) / 2
    x = torch.linspace(-half, half, steps=size)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    return (pdf / pdf.sum()).to(like)


def blur_queries(query: Tensor, spatial: Sequence[int], sigma: float, threshold_inf: float = math.inf) -> Tensor:
    """Smoothed-energy guidance's query blur (Hong, NeurIPS 2024, arXiv 2408.00760: blurring the queries blurs the
    attention weights, which lowers the curvature of the attention energy): every channel of ``query`` (B, N, C),
    its N = H W tokens seen as an H x W image, convolved with a normalised 2D Gaussian of std ``sigma`` (in tokens).

    As the authors' SEG-SDXL code and diffusers' ``_gaussian_blur_2d``: kernel width ``ceil(6 sigma)`` rounded up
    to odd, cut per axis to the side length (its largest odd number <= side + 1), reflect padding. ``sigma >
    threshold_inf``: the infinite blur, every token the channel's spatial mean (uniform attention).
    ``sigma <= 1/6`` gives a 1-token kernel, the query unchanged (``sigma = 0`` too). diffusers 0.42.1 swaps
    the two branches (its finite sigma gives the mean; diffusers PR #14187); here they are as the paper defines
    them. Returns a new tensor.
    """
    if sigma < 0:
        raise ValueError(f"blur sigma must be >= 0 (0 = no blur), got {sigma}")
    height, width = (int(n) for n in spatial) if len(spatial) == 2 else (int(spatial[0]), 1)
    b, n, c = query.shape
    if n != height * width:
        raise ValueError(f"blur_queries: {n} query tokens do not form the {height} x {width} grid")
    grid = query.transpose(1, 2).reshape(b, c, height, width)
    if sigma > threshold_inf:
        grid = grid.mean(dim=(-2, -1), keepdim=True).expand_as(grid)
    elif sigma > 0:
        size = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
        kh, kw = (min(size, side - (side % 2 - 1)) for side in (height, width))
        kernel = torch.outer(gaussian_kernel_1d(sigma, kh, query), gaussian_kernel_1d(sigma, kw, query))
        padded = F.pad(grid, [kw // 2, kw // 2, kh // 2, kh // 2], mode="reflect")
        grid = F.conv2d(padded, kernel.expand(c, 1, kh, kw), groups=c)
    return grid.reshape(b, c, n).transpose(1, 2).contiguous()


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling (Radford et al. 2021), ADM's ``pool='attention'`` classifier head.

    Tokens = [mean over positions, each position] + a learned positional embedding; the mean token queries
    all tokens with multi-head attention; the result goes through a linear map to ``out_dim``.
    """

    def __init__(self, num_positions: int, channels: int, out_dim: int, num_heads: int = 1,
                 num_head_channels: int = -1):
        super().__init__()
        self.num_heads = num_attention_heads(channels, num_heads, num_head_channels)
        self.pos_embedding = nn.Parameter(torch.randn(channels, num_positions + 1) / math.sqrt(channels))
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = nn.Conv1d(channels, out_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        tokens = x.reshape(b, c, -1)
        if tokens.shape[-1] + 1 != self.pos_embedding.shape[-1]:
            raise ValueError(f"attention pooling was built for {self.pos_embedding.shape[-1] - 1} positions, "
                             f"got {tokens.shape[-1]}")
        tokens = torch.cat([tokens.mean(dim=-1, keepdim=True), tokens], dim=-1) + self.pos_embedding.to(tokens.dtype)
        qkv = self.qkv(tokens).reshape(b, self.num_heads, 3, c // self.num_heads, -1).transpose(-1, -2)
        q, k, v = qkv.unbind(dim=2)
        # only the mean token's output is used, so only its query is needed
        pooled = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # (B, heads, 1, d)
        return self.proj(pooled.transpose(-1, -2).reshape(b, c, 1))[:, :, 0]


# ---- the parts shared by UNet and EncoderClassifier --------------------------------------------------


def check_image_config(data_shape: Sequence[int], channel_mult: Sequence[int], num_res_blocks: int,
                       attention_resolutions: Sequence[int], net_name: str) -> None:
    """Raise if the image shape cannot go through ``len(channel_mult) - 1`` halvings or attention is never reached."""
    if len(data_shape) != 3:
        raise ValueError(f"{net_name} needs data_shape=(C, H, W), got {tuple(data_shape)}")
    if not channel_mult or any(int(m) < 1 for m in channel_mult):
        raise ValueError(f"channel_mult must be a non-empty tuple of positive ints, got {tuple(channel_mult)}")
    if num_res_blocks < 1:
        raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
    _, height, width = data_shape
    factor = 2 ** (len(channel_mult) - 1)
    if height % factor or width % factor:
        raise ValueError(f"{net_name}: image size {height}x{width} is not divisible by 2^(len(channel_mult) - 1) = "
                         f"{factor} (channel_mult={tuple(channel_mult)}); use fewer levels or pad the images")
    rates = [2**level for level in range(len(channel_mult))]
    unreached = [r for r in attention_resolutions if r not in rates]
    if unreached:
        raise ValueError(f"attention_resolutions {tuple(attention_resolutions)} are downsample rates; this "
                         f"{net_name} has rates {tuple(rates)}, so {tuple(unreached)} would never be used")


def build_down_path(in_channels: int, model_channels: int, channel_mult: Sequence[int], num_res_blocks: int,
                    attention_resolutions: Sequence[int], emb_channels: int, dropout: float, num_heads: int,
                    num_head_channels: int, use_scale_shift_norm: bool, resblock_updown: bool,
                    ) -> tuple[nn.ModuleList, list[int], int, int]:
    """ADM's input blocks: a 3x3 conv, then per level ``num_res_blocks`` ResBlocks (+ attention where the
    level's rate is in ``attention_resolutions``) and a downsample between levels.

    Returns the blocks, the channel count after each block (the UNet's skip connections), the final
    channel count and the final downsample rate.
    """
    blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
    skip_channels = [model_channels]
    ch, ds = model_channels, 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            layers: list[nn.Module] = [ResBlock(ch, emb_channels, model_channels * mult, dropout, use_scale_shift_norm)]
            ch = model_channels * mult
            if ds in attention_resolutions:
                layers.append(AttentionBlock(ch, num_heads, num_head_channels))
            blocks.append(EmbedSequential(*layers))
            skip_channels.append(ch)
        if level != len(channel_mult) - 1:
            down = (ResBlock(ch, emb_channels, ch, dropout, use_scale_shift_norm, down=True) if resblock_updown
                    else Downsample(ch))
            blocks.append(EmbedSequential(down))
            skip_channels.append(ch)
            ds *= 2
    return blocks, skip_channels, ch, ds


def build_middle_block(channels: int, emb_channels: int, dropout: float, num_heads: int, num_head_channels: int,
                       use_scale_shift_norm: bool, attention: bool = True) -> EmbedSequential:
    """ADM's middle block: ResBlock, self-attention (ADM always has it; ``attention=False`` drops it), ResBlock."""
    layers: list[nn.Module] = [ResBlock(channels, emb_channels, channels, dropout, use_scale_shift_norm)]
    if attention:
        layers.append(AttentionBlock(channels, num_heads, num_head_channels))
    layers.append(ResBlock(channels, emb_channels, channels, dropout, use_scale_shift_norm))
    return EmbedSequential(*layers)
