"""A pretrained diffusers model (a local ``save_pretrained`` folder) as the diffusion model a ``SamplingModule``
samples, guides and decodes; and :func:`load_diffusion`, which reads a suite checkpoint file or such a folder.

Folder layouts (models/README.md): ``unet/`` (a ``UNet2DModel``, pixel space) or ``transformer/`` + ``vae/`` (a
``DiTTransformer2DModel`` and its ``AutoencoderKL``, latent space), each with ``scheduler/scheduler_config.json``,
whose schedule, prediction type, clipping and DDPM variance are mapped by
:mod:`lightning_guidance.diffusion.diffusers_schedule`.
A latent model samples latents (``data_shape``) and its shards hold the decoded images (``image_shape``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from ..diffusion.diffusers_schedule import ddpm_variance, model_folder, read_scheduler_config
from ..guidance.sweep import Sweep
from ..nets.diffusers_models import DiffusersDiT, DiffusersUNet, LatentDecoder, load_pretrained
from .cfg_diffusion import CFGDiffusion


@dataclass
class PretrainedOptions:
    """Settings of a diffusers model folder (``SamplingModule(pretrained=...)``).

    ``num_classes``: the classes of the samples (needed for an unconditional UNet; for a class-conditional one,
    one less than its class embeddings makes the last the null class); ``image_size``: the size the config expects
    of the (decoded) images, checked against the model; ``store_latents``: a latent model's shards also keep the
    sampled latents (key ``latents``); ``decode_batch_size``: images decoded at a time (None: the sampling batch).
    """

    num_classes: int | None = None
    image_size: int | None = None
    store_latents: bool = False
    decode_batch_size: int | None = None


class PretrainedDiffusion(nn.Module):
    """The diffusers model of ``folder`` behind the interface :func:`~lightning_guidance.diffusion.sampling.sample_ids`
    and ``SamplingModule`` use of ``CFGDiffusion``: ``net``, ``num_classes``, ``schedule``, ``data_shape``,
    ``device``, ``prediction``, ``clip_x0``, ``weak_model(rule)`` and ``hparams`` (schedule name, number of training
    steps, prediction kind, ``clip_x0``); and ``sampler_defaults``, the DDPM variance its scheduler config names."""

    def __init__(self, folder: str | Path, num_classes: int | None = None, image_size: int | None = None):
        super().__init__()
        root = model_folder(folder)
        mapped = read_scheduler_config(root)
        T = mapped.schedule.num_train_steps
        self.decoder: LatentDecoder | None = None
        if (root / "transformer").is_dir():
            self.net = DiffusersDiT(load_pretrained(root, "transformer", ("DiTTransformer2DModel",)), T, num_classes)
            self.decoder = LatentDecoder.from_folder(root)
            self.image_shape = self.decoder.image_shape(self.net.data_shape)
        elif (root / "unet").is_dir():
            self.net = DiffusersUNet(load_pretrained(root, "unet", ("UNet2DModel",)), T, num_classes)
            self.image_shape = self.net.data_shape
        else:
            raise FileNotFoundError(f"{root} holds neither unet/ (a UNet2DModel) nor transformer/ and vae/ (a DiT and "
                                    "its AutoencoderKL): see models/README.md for the layouts the suite reads")
        if image_size is not None and tuple(self.image_shape[1:]) != (int(image_size),) * 2:
            raise ValueError(f"{root} makes {self.image_shape[1]}x{self.image_shape[2]} images, the config asks for "
                             f"image_size {image_size}")
        self.folder = str(folder)
        self.schedule = mapped.schedule
        self.num_classes = self.net.num_classes
        self.has_null_class = self.net.has_null_class
        self.data_shape = tuple(self.net.data_shape)
        variance = ddpm_variance(root / "scheduler" / "scheduler_config.json", mapped.variance_type,
                                 self.net.drops_learned_variance)
        self.sampler_defaults = {"ddpm": {"variance": variance}}  # what sampler_kwargs override
        self.hparams = SimpleNamespace(schedule=mapped.name, num_train_steps=T, prediction=mapped.prediction,
                                       clip_x0=mapped.clip_x0)
        self.eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def train(self, mode: bool = True) -> PretrainedDiffusion:
        return super().train(False)  # a DiT drops labels at random in train mode: never train here

    #: what :func:`~lightning_guidance.diffusion.sampling.build_denoiser` reads, and the weak model of a CFG rule
    #: (autoguidance's worse model, a perturbed-attention view), as a CFGDiffusion has them (one place)
    prediction = CFGDiffusion.prediction
    clip_x0 = CFGDiffusion.clip_x0
    weak_model = CFGDiffusion.weak_model

    @torch.no_grad()
    def decode(self, latents: Tensor, batch_size: int | None = None) -> Tensor:
        """Images in [-1, 1] of sampled latents (``batch_size`` at a time); a pixel model's samples as they are."""
        if self.decoder is None:
            return latents
        step = batch_size or max(len(latents), 1)
        return torch.cat([self.decoder(latents[i:i + step]).clamp(-1, 1) for i in range(0, len(latents), step)])


def is_model_folder(checkpoint: str | Path, pretrained: PretrainedOptions | None) -> bool:
    """A diffusers folder rather than a suite checkpoint file: a folder on disk, a path without a file suffix, or
    any path given with ``pretrained`` options."""
    path = Path(checkpoint)
    return path.is_dir() or pretrained is not None or path.suffix == ""


def load_diffusion(checkpoint: str | Path, net: nn.Module | None = None, use_ema: bool = True,
                   pretrained: PretrainedOptions | None = None) -> CFGDiffusion | PretrainedDiffusion:
    """The diffusion model of a suite checkpoint file (``CFGDiffusion``) or of a diffusers model folder."""
    if not is_model_folder(checkpoint, pretrained):
        return CFGDiffusion.from_checkpoint(checkpoint, net=net, use_ema=use_ema)
    if net is not None:
        raise ValueError(f"{checkpoint} is a diffusers model folder: it brings its own network; drop net:")
    options = pretrained or PretrainedOptions()
    return PretrainedDiffusion(checkpoint, num_classes=options.num_classes, image_size=options.image_size)


def load_guide_model(checkpoint: str | Path, diffusion: nn.Module, use_ema: bool = True) -> nn.Module:
    """A second model that guides ``diffusion`` (autoguidance's worse model): a suite checkpoint, or a diffusers
    folder read with the classes of the model it guides."""
    pretrained = PretrainedOptions(num_classes=diffusion.num_classes) if is_model_folder(checkpoint, None) else None
    return load_diffusion(checkpoint, use_ema=use_ema, pretrained=pretrained)


def pretrained_identity(pretrained: PretrainedOptions | None) -> dict:
    """What a shard's config records of the pretrained options (nothing for a suite checkpoint): the ones that change
    what a shard holds (the classes, and so whether there is a null class; the latents), not the checks or batching."""
    if pretrained is None:
        return {}
    return {"pretrained": {"num_classes": pretrained.num_classes, "store_latents": pretrained.store_latents}}


def check_null_class(diffusion: nn.Module, sweep: Sweep, checkpoint: str) -> None:
    """Refuse, before any sampling, classifier-free guidance (a CFG scale other than 1 with the null class as the
    guide) of a model that has no null class."""
    if getattr(diffusion, "has_null_class", True):
        return
    rule = sweep.cfg_rule
    if rule is not None and rule.guide_is_other_model:
        return
    if any(s != 1 for s in sweep.cfg_scales):
        raise ValueError(f"{checkpoint} has no null class, so it cannot run classifier-free guidance (CFG scales "
                         f"{sweep.cfg_scales}): keep the CFG scale at 1 and guide with a classifier (sweep terms, e.g. "
                         "ClassifierGuidance) or with autoguidance (cfg_rule AutoGuidance and a worse model)")


def shard_samples(diffusion: nn.Module, samples: Tensor, pretrained: PretrainedOptions | None,
                  batch_size: int) -> tuple[Tensor, dict | None]:
    """What a shard stores of sampled ``samples``: the decoded images, and the latents when asked
    (``(images, {"latents": ...})``); a pixel model's samples as they are."""
    decode = getattr(diffusion, "decode", None)
    if decode is None or getattr(diffusion, "decoder", None) is None:
        return samples, None
    options = pretrained or PretrainedOptions()
    images = decode(samples, options.decode_batch_size or batch_size)
    return images, ({"latents": samples.float().cpu().numpy()} if options.store_latents else None)
