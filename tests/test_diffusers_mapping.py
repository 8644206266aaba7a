"""How a diffusers model folder is read: its scheduler config mapped onto the suite's VP schedule, its time steps,
its classes; and one clear line for each thing the suite cannot read.

Oracles: diffusers' schedulers themselves (``set_timesteps``, ``alphas_cumprod``) and the suite's linear/cosine
schedules written from their papers' formulas. The errors go through the shell entry point: what a user sees.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, ScoreSdeVeScheduler
from helpers import CONFIGS
from test_clear_errors import user_sees
from tiny_diffusers import ddim_scheduler, ddpm_scheduler, dit, save_dit_folder, save_unet_folder, unet, vae

from lightning_guidance.diffusion.diffusers_schedule import read_scheduler_config
from lightning_guidance.diffusion.schedules import VPSchedule
from lightning_guidance.modules.pretrained_diffusion import PretrainedDiffusion, PretrainedOptions
from lightning_guidance.nets.diffusers_models import model_timesteps


def scheduler_folder(tmp_path, scheduler):
    scheduler.save_pretrained(tmp_path / "scheduler")
    return tmp_path


# ---- the schedule ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta_schedule, suite", [("linear", "linear"), ("squaredcos_cap_v2", "cosine")])
def test_a_papers_schedule_maps_onto_the_suites_schedule_of_that_name(tmp_path, beta_schedule, suite):
    mapped = read_scheduler_config(scheduler_folder(tmp_path, DDPMScheduler(beta_schedule=beta_schedule)))
    ours = VPSchedule.from_name(suite, 1000).alphas_cumprod
    torch.testing.assert_close(mapped.schedule.alphas_cumprod, ours, rtol=2e-5, atol=1e-8)
    assert mapped.name == suite  # so a noisy classifier trained by the suite on it is accepted as a guide


def test_another_schedule_keeps_diffusers_abar_and_its_own_name(tmp_path):
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type="v_prediction", clip_sample=True)
    mapped = read_scheduler_config(scheduler_folder(tmp_path, scheduler))
    torch.testing.assert_close(mapped.schedule.alphas_cumprod, scheduler.alphas_cumprod.double(), rtol=1e-12, atol=0)
    assert (mapped.name, mapped.prediction, mapped.clip_x0) == ("diffusers-scaled_linear", "v", True)


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize("spacing, offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)])
def test_the_step_grid_is_diffusers_timestep_spacing(tmp_path, scheduler_class, spacing, offset):
    scheduler = scheduler_class(timestep_spacing=spacing, steps_offset=offset)
    schedule = read_scheduler_config(scheduler_folder(tmp_path, scheduler)).schedule
    for n in (1, 7, 10, 50, 333, 999):
        scheduler.set_timesteps(n)
        np.testing.assert_array_equal(schedule.respaced_indices(n).numpy(), scheduler.timesteps.numpy())


def test_a_grid_that_leaves_the_training_steps_is_refused(tmp_path):
    schedule = read_scheduler_config(scheduler_folder(tmp_path, DDIMScheduler(steps_offset=1))).schedule
    with pytest.raises(ValueError, match=r"^1000 steps with timestep_spacing 'leading' and steps_offset 1 leave"):
        schedule.respaced_indices(1000)


def test_model_time_is_the_models_own_integer_step():
    """Every DDPM/DDIM step reaches the network as the exact integer diffusers passes; EDM's fractional steps stay
    fractional."""
    T = 1000
    steps = torch.arange(T)
    t = (steps.double() / (T - 1)).float()
    assert torch.equal(model_timesteps(t, T), steps.float())
    fractional = torch.tensor([0.25, 17.5, 998.75], dtype=torch.float64)
    torch.testing.assert_close(model_timesteps((fractional / (T - 1)).float(), T).double(), fractional, atol=1e-4,
                               rtol=0)


# ---- the DDPM variance ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("variance_type, out_channels, expected", [
    ("fixed_small", 3, "small"), ("fixed_large", 3, "large"),
    ("learned_range", 6, "small"), ("learned", 6, "small"),  # channels dropped as DiTPipeline drops them: as before
])
def test_the_ddpm_variance_is_the_config_s(tmp_path, variance_type, out_channels, expected):
    net = unet(num_class_embeds=None)
    if out_channels != 3:  # a UNet with learned-sigma channels (ADM's layout)
        torch.manual_seed(0)
        net = type(net)(**{**net.config, "out_channels": out_channels}).eval()
    folder = save_unet_folder(tmp_path / "m", net, ddpm_scheduler(variance_type=variance_type))
    model = PretrainedDiffusion(folder, num_classes=2)
    assert model.sampler_defaults == {"ddpm": {"variance": expected}}


def test_another_scheduler_leaves_the_ddpm_variance_small(tmp_path):
    """DiT's DDIM config names no variance; the tiny DiT's learned-sigma channels are dropped: DDPM samples with the
    small variance, as before."""
    folder = save_dit_folder(tmp_path / "dit", dit(num_classes=10), vae(), ddim_scheduler())
    assert PretrainedDiffusion(folder).sampler_defaults == {"ddpm": {"variance": "small"}}


def test_the_config_s_variance_enters_the_shard_identity_and_a_given_one_wins(tmp_path):
    from lightning_guidance.modules.sampling import SamplingModule

    folder = save_unet_folder(tmp_path / "m", unet(num_class_embeds=None), ddpm_scheduler(variance_type="fixed_large"))
    args = dict(sampler="ddpm", output_dir=str(tmp_path / "out"), pretrained=PretrainedOptions(num_classes=2))
    assert SamplingModule(str(folder), **args).shard_config(1.0)["sampler_kwargs"]["variance"] == "large"
    given = SamplingModule(str(folder), sampler_kwargs={"variance": "small"}, **args)
    assert given.shard_config(1.0)["sampler_kwargs"]["variance"] == "small"
    assert SamplingModule(str(folder), **{**args, "sampler": "ddim"}).shard_config(1.0)["sampler_kwargs"] == \
        {"num_steps": 50, "eta": 0.0}  # the variance is DDPM's only


# ---- classes ----------------------------------------------------------------------------------------------
def test_class_embeddings_and_the_null_class(tmp_path):
    save_unet_folder(tmp_path / "a", unet(num_class_embeds=11))
    assert PretrainedDiffusion(tmp_path / "a").has_null_class is False
    with_null = PretrainedDiffusion(tmp_path / "a", num_classes=10)
    assert (with_null.num_classes, with_null.has_null_class) == (10, True)
    save_unet_folder(tmp_path / "b", unet(num_class_embeds=None))
    unconditional = PretrainedDiffusion(tmp_path / "b", num_classes=10)
    assert (unconditional.num_classes, unconditional.has_null_class) == (10, False)
    x, t = torch.randn(2, 3, 8, 8), torch.full((2,), 0.5)
    torch.testing.assert_close(unconditional.net(x, t, torch.tensor([0, 1])), unconditional.net(x, t, torch.tensor([9, 3])))
    for model in (unconditional, PretrainedDiffusion(tmp_path / "a")):  # the null id of a model that has none
        with pytest.raises(ValueError, match="^this UNet2DModel has no null class for classifier-free guidance$"):
            model.net(x, t, torch.tensor([0, model.num_classes]))


# ---- one line each for what cannot be read ------------------------------------------------------------------
def predict(tmp_path, checkpoint, *extra):
    return ["predict", "--config", CONFIGS / "cifar10/pretrained_ddpm_cg.yaml", "--model.init_args.checkpoint", checkpoint,
            "--trainer.default_root_dir", tmp_path / "out", "--model.init_args.sweep.terms", "[]",
            "--trainer.accelerator", "cpu", *extra]


def test_a_missing_model_folder_is_one_line(monkeypatch, tmp_path):
    line = user_sees(monkeypatch, *predict(tmp_path, tmp_path / "models/ddpm-cifar10-32"))
    assert line.startswith(f"error: FileNotFoundError: model folder not found: {tmp_path / 'models/ddpm-cifar10-32'}")
    (tmp_path / "half").mkdir()
    (tmp_path / "half/scheduler").mkdir()
    line = user_sees(monkeypatch, *predict(tmp_path, tmp_path / "half"))
    assert f"{tmp_path / 'half/scheduler/scheduler_config.json'} not found" in line


def test_cfg_of_a_model_without_a_null_class_offers_the_alternatives(monkeypatch, tmp_path):
    folder = save_unet_folder(tmp_path / "m", unet(image_size=32, num_class_embeds=None))
    line = user_sees(monkeypatch, *predict(tmp_path, folder, "--model.init_args.sweep.target", "cfg",
                                           "--model.init_args.sweep.values", "[1.0, 2.0]"))
    assert "has no null class, so it cannot run classifier-free guidance (CFG scales [1.0, 2.0])" in line
    assert "guide with a classifier" in line and "autoguidance" in line


@pytest.mark.parametrize("edit, expected", [
    ({"_class_name": "ScoreSdeVeScheduler"}, "scheduler 'ScoreSdeVeScheduler' is not a discrete beta schedule"),
    ({"prediction_type": "flow_prediction"}, "unknown prediction_type 'flow_prediction'; the suite maps epsilon, "
                                             "sample, v_prediction"),
    ({"timestep_spacing": "karras"}, "unknown timestep_spacing 'karras'"),
    ({"thresholding": True}, "dynamic thresholding (thresholding: true) has no counterpart"),
    ({"variance_type": "fixed_small_log"}, "variance_type 'fixed_small_log' has no counterpart in the suite's DDPM "
                                           "sampler, which maps fixed_small and fixed_large (variance small and large)"),
    ({"variance_type": "learned_range"}, "variance_type 'learned_range' has no counterpart"),  # no variance channels
])
def test_a_scheduler_the_suite_cannot_map_is_one_line(monkeypatch, tmp_path, edit, expected):
    folder = save_unet_folder(tmp_path / "m", unet(image_size=32, num_class_embeds=None))
    path = folder / "scheduler/scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    # a tiny run, so that a check that is missing fails at once instead of sampling the shipped config's 20,000
    line = user_sees(monkeypatch, *predict(tmp_path, folder, "--model.init_args.samples_per_class", "1",
                                           "--model.init_args.sweep.values", "[0.0]",
                                           "--model.init_args.sampler_kwargs", "{num_steps: 2}"))
    assert f"{path}: {expected}" in line


def test_a_scheduler_of_another_family_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"scheduler 'ScoreSdeVeScheduler' is not a discrete beta schedule"):
        read_scheduler_config(scheduler_folder(tmp_path / "ve", ScoreSdeVeScheduler()))
    for zero_snr in (EulerDiscreteScheduler(rescale_betas_zero_snr=True), DDIMScheduler(rescale_betas_zero_snr=True)):
        with pytest.raises(ValueError, match=r"abar does not decrease to a value above 0 \(zero terminal SNR\?\)"):
            read_scheduler_config(scheduler_folder(tmp_path / type(zero_snr).__name__, zero_snr))


@pytest.mark.parametrize("extra, expected", [
    (("--model.init_args.pretrained.image_size", "64"), "makes 32x32 images, the config asks for image_size 64"),
    (("--model.init_args.pretrained.num_classes", "5"), "the UNet2DModel embeds 11 class ids: num_classes must be 11 "
                                                        "(no null class) or 10 (the last id is the null class), got 5"),
])
def test_a_mismatched_image_size_or_class_count_is_one_line(monkeypatch, tmp_path, extra, expected):
    folder = save_unet_folder(tmp_path / "m", unet(image_size=32, num_class_embeds=11))
    assert expected in user_sees(monkeypatch, *predict(tmp_path, folder, *extra))


def test_a_dit_whose_vae_does_not_fit_is_one_line(tmp_path):
    from diffusers import AutoencoderKL

    eight = AutoencoderKL(latent_channels=8, down_block_types=("DownEncoderBlock2D",) * 2, layers_per_block=1,
                          up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), norm_num_groups=4)
    folder = save_dit_folder(tmp_path, dit(num_classes=3), eight, ddim_scheduler())
    with pytest.raises(ValueError, match=r"^the VAE decodes 8-channel latents, the diffusion model samples 4 "):
        PretrainedDiffusion(folder)
    save_dit_folder(tmp_path / "fits", dit(num_classes=3), vae(), ddim_scheduler())
    with pytest.raises(ValueError, match=r"^the DiT knows 3 classes \(num_embeds_ada_norm\), the config asks for 10$"):
        PretrainedDiffusion(tmp_path / "fits", num_classes=10)


def test_without_diffusers_the_adapter_says_how_to_install_it(monkeypatch, tmp_path):
    folder = save_unet_folder(tmp_path / "m", unet(image_size=32), ddpm_scheduler())
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` raises ImportError
    line = user_sees(monkeypatch, *predict(tmp_path, folder))
    assert line == ("error: ImportError: diffusers is not installed; models in the diffusers format need it: "
                    "pip install -e '.[diffusers]' (--debug: the traceback)")
