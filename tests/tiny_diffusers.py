"""Tiny random-weight diffusers models written with diffusers' own classes and ``save_pretrained`` (nothing is
downloaded): the folder layouts of models/README.md, at a size that samples in well under a second."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, DiTTransformer2DModel, UNet2DModel


def unet(image_size: int = 8, channels: int = 3, num_class_embeds: int | None = 11, seed: int = 0) -> UNet2DModel:
    """A two-level UNet2DModel with attention (class-conditional when ``num_class_embeds``)."""
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=image_size, in_channels=channels, out_channels=channels, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4,
                       num_class_embeds=num_class_embeds).eval()


def dit(num_classes: int = 1000, latent_size: int = 4, seed: int = 0) -> DiTTransformer2DModel:
    """A two-block DiT on 4-channel latents with learned sigma (8 output channels), as DiT-XL/2 has."""
    torch.manual_seed(seed)
    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                  num_layers=2, sample_size=latent_size, patch_size=2, num_embeds_ada_norm=num_classes)
    # adaLN-Zero starts at zero (the output would not depend on the input): random weights everywhere instead
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


def vae(image_channels: int = 3, seed: int = 0) -> AutoencoderKL:
    """A two-level AutoencoderKL: 4 latent channels, images twice the latents' size."""
    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=image_channels, out_channels=image_channels, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, sample_size=8).eval()


def ddim_scheduler(**overrides) -> DDIMScheduler:
    """DiT-XL-2-256's scheduler settings (linear betas, eps, no clipping, leading spacing)."""
    settings = dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000,
                    clip_sample=False, set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon")
    return DDIMScheduler(**{**settings, **overrides})


def ddpm_scheduler(**overrides) -> DDPMScheduler:
    """DDPM CIFAR-10's settings with the posterior variance (linear betas, eps, x0 clipped)."""
    settings = dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000,
                    clip_sample=True, variance_type="fixed_small", prediction_type="epsilon")
    return DDPMScheduler(**{**settings, **overrides})


def save_unet_folder(folder: Path, model: UNet2DModel | None = None, scheduler=None) -> Path:
    """``folder/unet`` and ``folder/scheduler`` (what ``DDPMPipeline.save_pretrained`` writes)."""
    (model or unet()).save_pretrained(folder / "unet")
    (scheduler or ddpm_scheduler()).save_pretrained(folder / "scheduler")
    return folder


def save_dit_folder(folder: Path, transformer: DiTTransformer2DModel | None = None, autoencoder=None,
                    scheduler=None) -> Path:
    """``folder/{transformer,vae,scheduler}`` (what ``DiTPipeline.save_pretrained`` writes)."""
    (transformer or dit()).save_pretrained(folder / "transformer")
    (autoencoder or vae()).save_pretrained(folder / "vae")
    (scheduler or ddim_scheduler()).save_pretrained(folder / "scheduler")
    return folder
