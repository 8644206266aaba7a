"""diffusers networks read from a local ``save_pretrained`` folder, as the suite's ``net(x, t, y)`` denoisers.

- :class:`DiffusersUNet`: a ``UNet2DModel`` in pixel space, unconditional or class-conditional through its class
  embedding (``num_class_embeds``; the null class of CFG is the last row when the table has one more row than the
  model has classes).
- :class:`DiffusersDiT`: a ``DiTTransformer2DModel`` in latent space; its null class is ``num_embeds_ada_norm``
  (the extra row of its label table) and of its ``2C`` output channels (eps and the learned variance) the first
  ``C`` are the prediction, as diffusers' ``DiTPipeline`` uses them.
- :class:`LatentDecoder`: an ``AutoencoderKL``'s decoder applied to latents ``z``: ``D(z / scaling_factor)``.

The suite's continuous time ``t = i / (T - 1)`` becomes the model's own step ``i`` (:func:`model_timesteps`). Models
are loaded with ``from_pretrained(<local folder>, local_files_only=True)``: a hub id is never used.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..diffusion.diffusers_schedule import import_diffusers, model_folder
from ..io.digests import file_identity
from .diffusers_attention import DiffusersPerturbedAttention, diffusers_self_attention

def load_pretrained(folder: str | Path, subfolder: str, classes: tuple[str, ...]) -> nn.Module:
    """``<folder>/<subfolder>`` loaded with its diffusers class (one of ``classes``), frozen, in eval mode."""
    diffusers = import_diffusers()
    config_path = model_folder(folder, subfolder, "config.json")
    kind = diffusers.UNet2DModel.load_config(str(config_path.parent), local_files_only=True).get("_class_name")
    if kind not in classes:
        raise ValueError(f"{config_path}: a {kind}, but the suite reads a {' or '.join(classes)} from {subfolder}/")
    model = getattr(diffusers, kind).from_pretrained(str(config_path.parent), local_files_only=True,
                                                low_cpu_mem_usage=False)
    return model.eval().requires_grad_(False)


def model_timesteps(t: Tensor, num_train_steps: int) -> Tensor:
    """The model's own step ``i = t (T - 1)`` (float32) for the suite's time ``t``: at a DDPM or DDIM step the exact
    integer diffusers passes (tests/test_diffusers_mapping.py checks every step of T = 1000); EDM's steps between
    training steps stay fractional, which a sinusoidal time embedding takes."""
    return (t.to(torch.float64) * (num_train_steps - 1)).to(torch.float32)


def _prediction_channels(out_channels: int, in_channels: int, name: str) -> int:
    """How many output channels are the prediction: all, or the first half when the rest is a learned variance."""
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(f"{name} returns {out_channels} channels for {in_channels} input channels; the suite reads a "
                         "prediction of the input's channels (and ignores a learned variance of as many more)")
    return in_channels


def _image_shape(channels: int, size) -> tuple[int, int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(channels), int(h), int(w)


class DiffusersUNet(nn.Module):
    """``forward(x, t, y)`` of a diffusers ``UNet2DModel``, as the model's prediction (eps, x0 or v).

    ``num_classes``: the classes the samples are labelled with. An unconditional UNet needs it (guidance gives the
    labels their meaning; the network ignores them) and has no null class. A class-conditional one has
    ``num_class_embeds`` rows: ``num_classes`` left out (or equal) means no null class; ``num_class_embeds - 1``
    makes the last row the null class of CFG.
    """

    perturbed_attention = DiffusersPerturbedAttention  # what PAG, SLG and SEG perturb (nets.diffusers_attention)

    def __init__(self, unet: nn.Module, num_train_steps: int, num_classes: int | None = None):
        super().__init__()
        config = unet.config
        if config.time_embedding_type != "positional":
            raise ValueError(f"UNet2DModel with time_embedding_type {config.time_embedding_type!r}: the suite "
                             "maps VP models with a positional (sinusoidal) time embedding only")
        if config.class_embed_type is not None:
            raise ValueError(f"UNet2DModel with class_embed_type {config.class_embed_type!r} conditions on a number, "
                             "not a class id: the suite reads class ids through num_class_embeds")
        self.unet, self.num_train_steps = unet, int(num_train_steps)
        self.conditional = config.num_class_embeds is not None
        rows = config.num_class_embeds
        if not self.conditional:
            if num_classes is None:
                raise ValueError("an unconditional UNet2DModel: give num_classes (pretrained: {num_classes: K}), the "
                                 "classes its guides steer towards")
            self.num_classes, self.has_null_class = int(num_classes), False
        else:
            k = rows if num_classes is None else int(num_classes)
            if k not in (rows, rows - 1):
                raise ValueError(f"the UNet2DModel embeds {rows} class ids: num_classes must be {rows} (no null "
                                 f"class) or {rows - 1} (the last id is the null class), got {k}")
            self.num_classes, self.has_null_class = k, k == rows - 1
        self.prediction_channels = _prediction_channels(config.out_channels, config.in_channels, "the UNet2DModel")
        self.drops_learned_variance = config.out_channels != self.prediction_channels
        self.data_shape = _image_shape(config.in_channels, config.sample_size)

    def self_attention_layers(self) -> list[nn.Module]:
        """Self-attention modules in forward order: down path, middle, up path."""
        return diffusers_self_attention([self.unet.down_blocks, self.unet.mid_block, self.unet.up_blocks])

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        if not self.has_null_class and bool((y >= self.num_classes).any()):
            raise ValueError("this UNet2DModel has no null class for classifier-free guidance")
        labels = y if self.conditional else None
        out = self.unet(x, model_timesteps(t, self.num_train_steps), class_labels=labels).sample
        return out[:, :self.prediction_channels]


class DiffusersDiT(nn.Module):
    """``forward(z, t, y)`` of a diffusers ``DiTTransformer2DModel`` on latents: the first ``C`` output channels
    (DiT's learned variance, the other ``C``, is dropped as ``DiTPipeline`` drops it). The null class of CFG is
    ``num_embeds_ada_norm``."""

    perturbed_attention = DiffusersPerturbedAttention  # what PAG, SLG and SEG perturb (nets.diffusers_attention)

    def __init__(self, transformer: nn.Module, num_train_steps: int, num_classes: int | None = None):
        super().__init__()
        config = transformer.config
        k = int(config.num_embeds_ada_norm)
        if num_classes is not None and int(num_classes) != k:
            raise ValueError(f"the DiT knows {k} classes (num_embeds_ada_norm), the config asks for {num_classes}")
        self.transformer, self.num_train_steps = transformer, int(num_train_steps)
        table = transformer.transformer_blocks[0].norm1.emb.class_embedder.embedding_table
        self.num_classes, self.has_null_class = k, table.num_embeddings == k + 1
        out_channels = config.out_channels or config.in_channels
        self.prediction_channels = _prediction_channels(out_channels, config.in_channels, "the DiT")
        self.drops_learned_variance = out_channels != self.prediction_channels
        self.data_shape = _image_shape(config.in_channels, config.sample_size)

    def self_attention_layers(self) -> list[nn.Module]:
        """Each transformer block's self-attention, in order."""
        return diffusers_self_attention([self.transformer.transformer_blocks])

    def forward(self, z: Tensor, t: Tensor, y: Tensor) -> Tensor:
        out = self.transformer(z, timestep=model_timesteps(t, self.num_train_steps), class_labels=y).sample
        return out[:, :self.prediction_channels]


def _checkpointed_call(module: nn.Module, *args):
    """One decoder block's forward without its activations kept: recomputed in the backward (a module-level
    function, so that a model with checkpointing on can be pickled to spawned DDP ranks)."""
    return checkpoint(module.__call__, *args, use_reentrant=False)


class LatentDecoder(nn.Module):
    """``forward(z) = vae.decode(z / scaling_factor (+ shift_factor))``: images (about [-1, 1]) from the latents a
    latent diffusion model samples (Rombach et al. 2022: latents are scaled to unit variance for the diffusion).

    ``checkpointing``: the decoder's blocks keep no activations for the backward and recompute them there
    (diffusers' gradient checkpointing): the peak memory of a gradient through the decoder drops to about one
    block's activations at the price of a second decoder forward.
    """

    def __init__(self, vae: nn.Module, checkpointing: bool = False):
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)
        shift = getattr(vae.config, "shift_factor", None)
        self.shift_factor = 0.0 if shift is None else float(shift)
        self.latent_channels = int(vae.config.latent_channels)
        self.downscale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_channels = int(vae.config.out_channels)
        self.checkpointing = bool(checkpointing)
        if self.checkpointing:
            vae.enable_gradient_checkpointing(_checkpointed_call)

    @classmethod
    def from_folder(cls, folder: str | Path, checkpointing: bool = False) -> LatentDecoder:
        """The decoder of ``<folder>/vae`` (an ``AutoencoderKL``)."""
        return cls(load_pretrained(folder, "vae", ("AutoencoderKL",)), checkpointing)

    def image_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """The decoded image shape of latents of ``latent_shape`` (C, h, w)."""
        if latent_shape[0] != self.latent_channels:
            raise ValueError(f"the VAE decodes {self.latent_channels}-channel latents, the diffusion model samples "
                             f"{latent_shape[0]} channels: use the VAE the model was trained with")
        return self.image_channels, latent_shape[1] * self.downscale, latent_shape[2] * self.downscale

    def forward(self, z: Tensor) -> Tensor:
        return self.vae.decode(z / self.scaling_factor + self.shift_factor).sample


class DecodedImageClassifier(nn.Module):
    """``forward(z, t=None) = classifier(clamp(D(z), -1, 1), t)``: a pixel-space classifier reading a latent model's
    samples through its VAE decoder ``D``, so that guidance differentiates through the decoder
    (``∇_z log p(y | D(z))``, EluCD §5.3). Give the guidance term ``clip_x0: false``: latents are not in [-1, 1].

    ``model_folder``: the latent model's folder (its ``vae/``); ``checkpointing``: see :class:`LatentDecoder`.
    """

    def __init__(self, classifier: nn.Module, model_folder: str, checkpointing: bool = False):
        super().__init__()
        self.classifier = classifier
        self.decoder = LatentDecoder.from_folder(model_folder, checkpointing)
        self.model_folder = str(model_folder)
        self.num_classes = int(getattr(classifier, "num_classes"))
        # what names this guide's weights in a shard's config: the classifier's own file
        self.weights_path = getattr(classifier, "checkpoint", None) or getattr(classifier, "weights_path", None)

    def train(self, mode: bool = True) -> DecodedImageClassifier:
        return super().train(False)  # a frozen guide: BatchNorm and dropout stay in eval mode

    def forward(self, z: Tensor, t: Tensor | None = None) -> Tensor:
        return self.classifier(self.decoder(z).clamp(-1, 1), t)

    def extra_repr(self) -> str:
        """The settings that enter a shard's config: the VAE by content, and the classifier's own settings."""
        vae = file_identity(Path(self.model_folder) / "vae").get("sha256")
        return f"{type(self.classifier).__name__} on images decoded by the VAE {vae}; {self.classifier.extra_repr()}"
