"""A diffusers model read from its save_pretrained folder samples exactly as diffusers' own loops and pipeline.

Oracles: a loop over diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` calling the ``UNet2DModel`` itself, and
``DiTPipeline`` with the folder's DDIM scheduler (its latents captured at the VAE's input, its images as it returns
them). Same seeds: diffusers draws a list of per-sample generators row by row, as ``PerSampleNoise`` does.

The tiny models have random weights, which predict nothing like the noise: sampled on a schedule that ends at
``abar_T ~ 1e-4`` they blow up to ~1e2, where float32 itself differs by 1e-5. So the schedules here end at
``beta_end = 0.002`` (``abar_T ~ 0.35``, samples of unit size, where 1e-5 is a real test); the DDPM test keeps
DDPM CIFAR-10's own linear schedule with ``clip_sample``, which holds the samples in [-1, 1] too.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DiTPipeline
from diffusers.utils.torch_utils import randn_tensor
from tiny_diffusers import ddim_scheduler, ddpm_scheduler, dit, save_dit_folder, save_unet_folder, unet, vae

from lightning_guidance.diffusion.guidance_setting import GuidanceSetting
from lightning_guidance.diffusion.sampling import sample_batches
from lightning_guidance.modules.pretrained_diffusion import PretrainedDiffusion

TOLERANCE = 1e-5
SEEDS, LABELS = [3, 1, 4, 1, 5], torch.tensor([0, 5, 9, 2, 7])


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def diffusers_loop(net, scheduler, num_steps: int, shape, **step_kwargs) -> torch.Tensor:
    """diffusers' own sampling loop: the scheduler's timesteps, the network called on them, ``scheduler.step``."""
    gens = generators(SEEDS)
    x = randn_tensor((len(SEEDS), *shape), generator=gens)
    scheduler.set_timesteps(num_steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = net(x, t, class_labels=LABELS).sample
            x = scheduler.step(eps, t, x, generator=gens, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_on_a_class_conditional_unet_equals_diffusers_ddim_loop(tmp_path, eta):
    """Leading spacing with steps_offset 1 (Stable Diffusion's setting): the network sees 981, 961, ..., 1."""
    net, scheduler = unet(num_class_embeds=11), ddim_scheduler(beta_end=0.002, steps_offset=1)
    model = PretrainedDiffusion(save_unet_folder(tmp_path, net, scheduler), num_classes=10)
    ours, _ = sample_batches(model, LABELS, SEEDS, sampler="ddim", sampler_kwargs=dict(num_steps=12, eta=eta))
    theirs = diffusers_loop(net, scheduler, 12, model.data_shape, eta=eta)
    assert ours.abs().max() > 0.5  # samples of unit size, where the tolerance means something
    assert max_difference(ours, theirs) <= TOLERANCE


@pytest.mark.parametrize("clip, beta_end", [(False, 0.002), (True, 0.02)])
def test_ddpm_on_a_class_conditional_unet_equals_diffusers_ddpm_loop(tmp_path, clip, beta_end):
    net, scheduler = unet(num_class_embeds=10), ddpm_scheduler(clip_sample=clip, beta_end=beta_end)
    model = PretrainedDiffusion(save_unet_folder(tmp_path, net, scheduler))
    ours, _ = sample_batches(model, LABELS, SEEDS, sampler="ddpm", sampler_kwargs=dict(num_steps=12))
    theirs = diffusers_loop(net, scheduler, 12, model.data_shape)
    assert model.hparams.clip_x0 is clip and not model.has_null_class
    assert ours.abs().max() > 0.5
    assert max_difference(ours, theirs) <= TOLERANCE


def test_ddpm_on_a_unet_whose_config_says_fixed_large_equals_diffusers_fixed_large_loop(tmp_path):
    """DDPM CIFAR-10's own setting (``variance_type: fixed_large``, clipped x0): the folder's variance is the DDPM
    sampler's default; an explicit ``variance: small`` wins and equals diffusers' ``fixed_small`` loop instead."""
    net, scheduler = unet(num_class_embeds=10), ddpm_scheduler(variance_type="fixed_large")
    model = PretrainedDiffusion(save_unet_folder(tmp_path, net, scheduler))
    ours, _ = sample_batches(model, LABELS, SEEDS, sampler="ddpm", sampler_kwargs=dict(num_steps=12))
    theirs = diffusers_loop(net, scheduler, 12, model.data_shape)
    assert ours.abs().max() > 0.5
    assert max_difference(ours, theirs) <= TOLERANCE
    small, _ = sample_batches(model, LABELS, SEEDS, sampler="ddpm", sampler_kwargs=dict(num_steps=12, variance="small"))
    assert max_difference(small, diffusers_loop(net, ddpm_scheduler(), 12, model.data_shape)) <= TOLERANCE
    assert max_difference(small, theirs) > 0.1


@pytest.fixture(scope="module")
def tiny_dit(tmp_path_factory):
    """A tiny DiT (1000 classes: DiTPipeline's null class is id 1000) with its VAE and DDIM scheduler, saved."""
    transformer, autoencoder, scheduler = dit(num_classes=1000), vae(), ddim_scheduler(beta_end=0.002)
    folder = save_dit_folder(tmp_path_factory.mktemp("dit"), transformer, autoencoder, scheduler)
    pipe = DiTPipeline(transformer=transformer, vae=autoencoder, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return folder, pipe


def pipeline_latents_and_images(pipe, labels, scale: float, num_steps: int):
    """``DiTPipeline``'s images ([0, 1]) and the latents it decoded (captured at the VAE, unscaled back)."""
    seen = []
    decode = pipe.vae.decode

    def capture(z, *args, **kwargs):
        seen.append(z * pipe.vae.config.scaling_factor)
        return decode(z, *args, **kwargs)

    pipe.vae.decode = capture
    try:
        images = pipe(class_labels=labels.tolist(), guidance_scale=scale, generator=generators(SEEDS),
                      num_inference_steps=num_steps, output_type="pt").images
    finally:
        pipe.vae.decode = decode
    return seen[0], images


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_cfg_sampling_of_dit_and_vae_equals_dit_pipeline(tiny_dit, scale):
    """CFG with the null class 1000 on the eps channels, DiT's learned-sigma channels dropped, latents scaled by
    the VAE's scaling_factor: the latents and the decoded images equal the pipeline's."""
    folder, pipe = tiny_dit
    model = PretrainedDiffusion(folder)
    labels = torch.tensor([0, 500, 999, 7, 7])
    latents, _ = sample_batches(model, labels, SEEDS, sampler="ddim", sampler_kwargs=dict(num_steps=10),
                                setting=GuidanceSetting(scale))
    images = model.decode(latents)
    their_latents, their_images = pipeline_latents_and_images(pipe, labels, scale, 10)
    assert model.num_classes == 1000 and model.has_null_class and model.image_shape == (3, 8, 8)
    assert latents.abs().max() > 0.5
    assert max_difference(latents, their_latents) <= TOLERANCE
    assert max_difference((images / 2 + 0.5).clamp(0, 1), their_images) <= TOLERANCE
    if scale != 1:  # guidance changed the samples (the null class was really used)
        unguided, _ = sample_batches(model, labels, SEEDS, sampler="ddim", sampler_kwargs=dict(num_steps=10))
        assert max_difference(latents, unguided) > 0.01
