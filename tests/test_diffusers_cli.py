"""The shipped pretrained-model configs through the real CLI on tiny diffusers folders: ``predict`` writes shards of
decoded images (and latents when asked), ``test`` grades them, and two processes write what one writes.

The configs are the shipped ones (configs/imagenet/pretrained_dit_cfg.yaml, configs/cifar10/pretrained_ddpm_cg.yaml)
with the model folder, the guide's checkpoint and the sizes replaced: the tiny DiT makes 1x8x8 images over 10
classes, so that the digits judge and data grade them. Oracle for the shards: the adapter called here by hand
(``sample_ids`` on the folder's model, decoded by its VAE).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import CONFIGS, cli, cli_on_two_processes, read_yaml
from tiny_diffusers import ddim_scheduler, ddpm_scheduler, dit, save_dit_folder, save_unet_folder, unet, vae

from lightning_guidance.diffusion.guidance_setting import GuidanceSetting
from lightning_guidance.diffusion.sampling import sample_ids
from lightning_guidance.io.shards import read_shard, shard_paths, to_uint8
from lightning_guidance.modules.pretrained_diffusion import PretrainedDiffusion

QUIET = ("--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu")


@pytest.fixture(scope="module")
def judge(tmp_path_factory) -> Path:
    """The digits judge after a few steps (its quality does not matter here, only that it grades)."""
    root = tmp_path_factory.mktemp("judge")
    cli("fit", "--config", CONFIGS / "digits/judge.yaml", "--trainer.default_root_dir", root, "--trainer.max_steps",
        "3", *QUIET)
    return root / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def dit_folder(tmp_path_factory) -> Path:
    """A tiny DiT over 10 classes on 4x4x4 latents, its VAE decoding to 1x8x8 images (digits' shape)."""
    return save_dit_folder(tmp_path_factory.mktemp("dit"), dit(num_classes=10), vae(image_channels=1),
                           ddim_scheduler(beta_end=0.002))


def dit_predict_args(folder: Path, out: Path) -> list:
    return ["predict", "--config", CONFIGS / "imagenet/pretrained_dit_cfg.yaml", *QUIET,
            "--model.init_args.checkpoint", folder, "--model.init_args.output_dir", out,
            "--trainer.default_root_dir", out, "--model.init_args.pretrained.image_size", "8",
            "--model.init_args.pretrained.store_latents", "true", "--model.init_args.sampler", "ddim",
            "--model.init_args.sampler_kwargs", "{num_steps: 4}", "--model.init_args.sweep.values", "[1.0, 4.0]",
            "--model.init_args.samples_per_class", "2", "--model.init_args.shard_size", "8",
            "--model.init_args.batch_size", "8"]


def grade_args(judge: Path) -> list:
    return ["--config", CONFIGS / "digits/grade_with_judge.yaml", "--model.init_args.judge.init_args.checkpoint", judge]


def shard_arrays(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    found = {}
    for path in sorted(folder.rglob("shard_*.npz")):
        with np.load(path) as z:
            found[str(path.relative_to(folder))] = {k: np.asarray(z[k]) for k in ("images", "latents", "labels",
                                                                                     "sample_ids")}
    return found


@pytest.fixture(scope="module")
def dit_shards(dit_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dit_samples")
    cli(*dit_predict_args(dit_folder, out))
    return out


def test_predict_writes_decoded_images_and_latents_that_test_grades(dit_folder, dit_shards, judge):
    model = PretrainedDiffusion(dit_folder)
    for scale in (1.0, 4.0):
        paths = shard_paths(dit_shards / f"cfg_{scale:g}")
        assert len(paths) == 3  # 20 samples in shards of 8
        for path in paths:
            shard = read_shard(path)
            with np.load(path) as z:
                latents = torch.from_numpy(z["latents"])
            ids = shard.sample_ids.tolist()
            by_hand, labels = sample_ids(model, ids, list(range(10)), 0, sampler="ddim",
                                         sampler_kwargs={"num_steps": 4}, setting=GuidanceSetting(scale))
            torch.testing.assert_close(latents, by_hand, rtol=0, atol=1e-5)
            assert shard.samples.shape == (len(ids), 1, 8, 8) and torch.equal(shard.labels, labels)
            decoded = to_uint8(model.decode(latents))
            assert np.abs(decoded.astype(int) - to_uint8(shard.samples).astype(int)).max() <= 1
    cli("test", "--config", CONFIGS / "imagenet/pretrained_dit_cfg.yaml", *dit_predict_args(dit_folder, dit_shards)[3:],
        *grade_args(judge))
    table = yaml.safe_load((dit_shards / "metrics_table.json").read_text())
    assert [row["value"] for row in table["rows"]] == [1.0, 4.0]
    for row in table["rows"]:
        assert row["num_samples"] == 20 and all(np.isfinite(v) for v in row["metrics"].values())


def test_two_processes_write_the_shards_of_one(dit_folder, dit_shards, tmp_path):
    cli_on_two_processes(*dit_predict_args(dit_folder, tmp_path))
    one, two = shard_arrays(dit_shards), shard_arrays(tmp_path)
    assert sorted(one) == sorted(two) and len(one) == 6
    for name in one:
        for key in one[name]:
            np.testing.assert_array_equal(one[name][key], two[name][key], err_msg=f"{name} {key}")


def shipped_config_on(config: str, folder: Path, out: Path, values: list[float], num_steps: int,
                      edit_guide) -> Path:
    """The shipped ``config`` with the model ``folder`` (8 px images), the sweep ``values``, 10 samples in one shard
    written to ``out``, and its guidance term's classifier edited by ``edit_guide(init_args)``; saved next to out."""
    cfg = read_yaml(CONFIGS / config)
    init = cfg["model"]["init_args"]
    init["checkpoint"], init["pretrained"]["image_size"] = str(folder), 8
    edit_guide(init["sweep"]["terms"][0]["init_args"]["classifier"]["init_args"])
    init["sweep"]["values"] = values
    init.update(output_dir=str(out), sampler_kwargs={"num_steps": num_steps}, samples_per_class=1, shard_size=10,
                batch_size=10)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_classifier_guidance_of_an_unconditional_unet_through_predict_and_test(tmp_path, judge):
    """configs/cifar10/pretrained_ddpm_cg.yaml with a tiny unconditional UNet and a tiny noisy classifier trained by
    the suite on the folder's (linear) schedule: guidance scale 0 and 3, graded."""
    classifier_root = tmp_path / "classifier"
    cli("fit", "--config", CONFIGS / "digits/classifier.yaml", "--trainer.default_root_dir", classifier_root,
        "--trainer.max_steps", "2", "--model.init_args.schedule", "linear", "--model.init_args.net.init_args."
        "model_channels", "8", "--model.init_args.net.init_args.channel_mult", "[1]", *QUIET)
    folder = save_unet_folder(tmp_path / "ddpm", unet(image_size=8, channels=1, num_class_embeds=None),
                              ddpm_scheduler())
    guide = str(classifier_root / "checkpoints" / "last.ckpt")
    config = shipped_config_on("cifar10/pretrained_ddpm_cg.yaml", folder, tmp_path / "out", [0.0, 3.0], 4,
                               lambda classifier: classifier.update(checkpoint=guide))
    cli("predict", "--config", config, *QUIET)
    unguided, guided = (read_shard(tmp_path / f"out/guidance_{v}/shard_0000000.npz").samples for v in ("0", "3"))
    assert unguided.shape == (10, 1, 8, 8) and not torch.equal(unguided, guided)
    cli("test", "--config", config, *QUIET, *grade_args(judge))
    table = yaml.safe_load((tmp_path / "out/metrics_table.json").read_text())
    assert [row["value"] for row in table["rows"]] == [0.0, 3.0]


def test_elucd_dit_row_runs_with_a_torchvision_classifier_from_a_weights_file(dit_folder, tmp_path):
    """configs/imagenet/pretrained_dit_elucd.yaml on the tiny DiT: CFG 1.5 plus the classifier through the decoder,
    the classifier a torchvision network read from a local weights file (a ResNet-18 over the tiny model's 10
    classes here, at 32 px, in place of the ImageNet ResNet-50)."""
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights)
    def small_resnet(decoded: dict) -> None:
        decoded["model_folder"] = str(dit_folder)
        decoded["classifier"]["init_args"].update(arch="resnet18", weights_path=str(weights), input_size=32,
                                                  torchvision_weights="IMAGENET1K_V1", model_kwargs={"num_classes": 10})

    config = shipped_config_on("imagenet/pretrained_dit_elucd.yaml", dit_folder, tmp_path / "out", [0.0, 4.0], 3,
                               small_resnet)
    cli("predict", "--config", config, *QUIET)
    cfg_only, guided = (read_shard(tmp_path / f"out/guidance_{v}/shard_0000000.npz") for v in ("0", "4"))
    assert cfg_only.samples.shape == (10, 1, 8, 8) and not torch.equal(cfg_only.samples, guided.samples)
    term = cfg_only.config["guidance"][0]
    assert term["class"] == "CFGPlusClassifierGuidance" and cfg_only.config["cfg_scale"] == 1.5
    assert "sha256" in term["classifier"] and "on images decoded by the VAE" in term["classifier"]["settings"]


def test_the_postprocessor_moves_the_decoded_images_and_test_grades_them(dit_folder, dit_shards, judge, tmp_path):
    """configs/digits/flow.yaml trained for a few steps on the DiT's decoded shards, applied to them, and the
    post-processed shards graded by the DiT sampling config's test stage (as the samples they came from)."""
    folders = "[" + ", ".join(str(dit_shards / f"cfg_{s}") for s in ("1", "4")) + "]"
    flow = ["--config", CONFIGS / "digits/flow.yaml", "--trainer.default_root_dir", tmp_path / "flow", *QUIET,
            "--model.init_args.net.init_args.model_channels", "8", "--model.init_args.net.init_args.channel_mult",
            "[1]", "--model.init_args.k", "3", "--model.init_args.integrator_kwargs", "{num_steps: 2}",
            "--model.init_args.output_dir", tmp_path / "post", "--data.init_args.shards", folders,
            "--data.init_args.predict_shards", folders, "--data.init_args.batch_size", "8"]
    cli("fit", *flow, "--trainer.max_steps", "4", "--model.init_args.lr", "0.01", "--model.init_args.warmup_steps", "0")
    cli("predict", *flow, "--ckpt_path", tmp_path / "flow/checkpoints/last.ckpt")
    before, after = (read_shard(root / "cfg_4/shard_0000000.npz") for root in (dit_shards, tmp_path / "post"))
    assert after.samples.shape == before.samples.shape and not torch.equal(after.samples, before.samples)
    args = dit_predict_args(dit_folder, tmp_path / "post")[3:]
    cli("test", "--config", CONFIGS / "imagenet/pretrained_dit_cfg.yaml", *args, *grade_args(judge))
    table = yaml.safe_load((tmp_path / "post/metrics_table.json").read_text())
    assert [row["value"] for row in table["rows"]] == [1.0, 4.0]


def test_a_shard_records_the_options_that_change_it(dit_folder, dit_shards, tmp_path):
    """The model folder by its content, and store_latents, which changes what a shard holds: a re-run without it is
    told the shards are stale (the image-size check changes nothing and is not recorded)."""
    config = read_shard(shard_paths(dit_shards / "cfg_4")[0]).config
    assert config["pretrained"] == {"num_classes": None, "store_latents": True}
    assert "sha256" in config["checkpoint"]
    shutil.copytree(dit_shards, tmp_path / "copy")
    args = dit_predict_args(dit_folder, tmp_path / "copy")
    args[args.index("--model.init_args.pretrained.store_latents") + 1] = "false"
    with pytest.raises(ValueError, match=r"stale shard .*pretrained: \{\"num_classes\": null, \"store_latents\": true\}"):
        cli(*args)
