"""Every shipped CFG-variant file (``configs/guidance/``) on every dataset it documents, through the real CLI
(``predict``) on DDPM, DDIM and EDM, on tiny checkpoints of the shipped training configs; a variant that cannot act on
the data is refused at construction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from helpers import CONFIGS, SAMPLING, cli, guidance_combinations, read_yaml, rewrite_sampling_config, tiny_checkpoints
from lightning_guidance.io.shards import read_shard

SAMPLERS = ("ddpm", "ddim", "edm")
RULE_CONFIGS = guidance_combinations(has="cfg_rule")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory)


def _predict(path: Path) -> None:
    cli("predict", "--config", path, "--trainer.enable_progress_bar", "false")


@pytest.fixture
def no_pictures(monkeypatch):
    from lightning_guidance.io import shards

    monkeypatch.setattr(shards, "save_sample_picture", lambda samples, labels, path, **kw: Path(path))


def test_every_variant_has_a_config_per_family():
    variants = {"cfg_interval", "cfg_rescale", "apg", "cfg_zero_star", "tangential_cfg", "autoguidance"}
    assert {(SAMPLING["fractal"], f"guidance/{v}.yaml") for v in variants} <= set(RULE_CONFIGS)
    digits = variants | {"fdg", "pag", "slg", "seg"}
    assert {(SAMPLING["digits"], f"guidance/{v}.yaml") for v in digits} <= set(RULE_CONFIGS)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("config", RULE_CONFIGS)
def test_variant_config_runs_on_every_sampler(config, sampler, tiny_checkpoint, tmp_path, no_pictures):
    out = tmp_path / "samples"
    path = rewrite_sampling_config(config, out, tiny_checkpoint, sampler=sampler, sampler_kwargs={"num_steps": 3},
                                   values=[2.5], samples_per_class=2, shard_size=64, batch_size=64)
    _predict(path)
    [shard] = sorted(out.glob("cfg_2.5/shard_*.npz"))
    x = read_shard(shard).samples
    assert torch.isfinite(x).all()
    rule = read_yaml(CONFIGS / config[1])["model"]["init_args"]["sweep"]["cfg_rule"]
    made = json.loads((out / "manifest.json").read_text())["values"]["2.5"]["config"]
    assert made["cfg_rule"]["class"] == rule["class_path"].rsplit(".", 1)[1]  # the rule is in the shard's hash
    if "guide_checkpoint" in (rule.get("init_args") or {}):
        # the worse model is named by its content digest, so a retrained guide makes these shards stale
        assert len(made["cfg_rule"]["guide"]["sha256"]) == 16


def test_rule_settings_enter_the_shard_hash(tiny_checkpoint, tmp_path, no_pictures):
    """Changing a rule's value makes the old shards another config's: predict refuses to mix them."""
    out = tmp_path / "samples"
    small = dict(sampler_kwargs={"num_steps": 2}, values=[2.0], samples_per_class=2)
    config = (SAMPLING["fractal"], "guidance/cfg_rescale.yaml")
    _predict(rewrite_sampling_config(config, out, tiny_checkpoint, **small))
    path = rewrite_sampling_config(config, out, tiny_checkpoint, **small)
    cfg = read_yaml(path)
    cfg["model"]["init_args"]["sweep"]["cfg_rule"]["init_args"]["guidance_rescale"] = 0.3
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="stale shard .*made with another sampling config"):
        _predict(path)


def test_frequency_decoupled_guidance_is_refused_on_the_fractal(tiny_checkpoint, tmp_path):
    path = rewrite_sampling_config((SAMPLING["digits"], "guidance/fdg.yaml"), tmp_path / "fdg", tiny_checkpoint,
                                   samples_per_class=2)
    cfg = read_yaml(path)
    cfg["model"]["init_args"]["checkpoint"] = str(tiny_checkpoint("runs/fractal/cfg/checkpoints/last.ckpt"))
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match=r"FrequencyDecoupledGuidance splits images .* not images"):
        _predict(path)
    assert not list((tmp_path / "fdg").rglob("*.npz"))


def test_autoguidance_refuses_a_guide_trained_for_other_data(tiny_checkpoint, tmp_path):
    path = rewrite_sampling_config((SAMPLING["fractal"], "guidance/autoguidance.yaml"), tmp_path / "ag", tiny_checkpoint,
                                   samples_per_class=2)
    cfg = read_yaml(path)
    cfg["model"]["init_args"]["sweep"]["cfg_rule"]["init_args"]["guide_checkpoint"] = str(
        tiny_checkpoint("runs/digits/cfg/checkpoints/last.ckpt"))
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="train the worse model on the same data"):
        _predict(path)


@pytest.mark.parametrize("rule", ["pag", "slg", "seg"])
def test_attention_perturbation_is_refused_on_the_fractal_mlp(rule, tiny_checkpoint, tmp_path):
    path = rewrite_sampling_config((SAMPLING["digits"], f"guidance/{rule}.yaml"), tmp_path / "pag", tiny_checkpoint,
                                   samples_per_class=2)
    cfg = read_yaml(path)
    cfg["model"]["init_args"]["checkpoint"] = str(tiny_checkpoint("runs/fractal/cfg/checkpoints/last.ckpt"))
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="MLPDenoiser has no self-attention layers"):
        _predict(path)


def test_rescale_is_refused_on_samples_of_one_value(tiny_checkpoint, tmp_path):
    """guidance_rescale divides by a sample's standard deviation: on the 1D toy (one value per sample) it is 0/0,
    so the rule is refused when the module is built, not met as a NaN at the first sampling step."""
    path = rewrite_sampling_config((SAMPLING["toy"], "guidance/cfg_rescale.yaml"), tmp_path / "rescale",
                                   tiny_checkpoint, samples_per_class=2)
    with pytest.raises(ValueError, match=r"CFGRescale: guidance_rescale .* hold one value"):
        _predict(path)
    assert not list((tmp_path / "rescale").rglob("*.npz"))
