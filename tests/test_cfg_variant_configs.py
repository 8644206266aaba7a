"""Every shipped CFG-variant sampling YAML through the real CLI (``predict``) on DDPM, DDIM and EDM, on tiny
checkpoints of the shipped training configs; a variant that cannot act on the data is refused at construction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from helpers import CONFIGS, cli
from lightning_guidance.io.shards import read_shard

SAMPLERS = ("ddpm", "ddim", "edm")


def _read(path: Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


RULE_CONFIGS = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.glob("*/sample_*.yaml")
                      if ((_read(p).get("model", {}).get("init_args") or {}).get("sweep") or {}).get("cfg_rule"))

_DIGITS_NET = ("--model.init_args.net.init_args.model_channels", "8",
               "--model.init_args.net.init_args.channel_mult", "[1]", "--data.init_args.batch_size", "16")
_TOY = ("--data.init_args.n_train", "256", "--data.init_args.n_val", "64", "--data.init_args.batch_size", "64",
        "--model.init_args.net.init_args.hidden_dim", "16")
TINY = {"digits/cfg.yaml": _DIGITS_NET, "digits/cfg_autoguide_bad.yaml": _DIGITS_NET,
        "fractal/cfg.yaml": _TOY, "fractal/cfg_autoguide_bad.yaml": (*_TOY[:6], "--model.init_args.net.init_args.hidden_dim", "8")}


def _config_training(run_checkpoint: str) -> str:
    for config in TINY:
        if f"{_read(CONFIGS / config)['trainer']['default_root_dir']}/checkpoints/last.ckpt" == run_checkpoint:
            return config
    raise AssertionError(f"no training config in configs/ writes {run_checkpoint}")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    made: dict[str, Path] = {}

    def get(run_checkpoint: str) -> Path:
        if run_checkpoint not in made:
            config = _config_training(run_checkpoint)
            root = tmp_path_factory.mktemp(config.replace("/", "_").removesuffix(".yaml"))
            cli("fit", "--config", CONFIGS / config, "--trainer.default_root_dir", root, "--trainer.max_steps", "2",
                "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1", *TINY[config])
            made[run_checkpoint] = root / "checkpoints" / "last.ckpt"
        return made[run_checkpoint]

    return get


def _rewrite(config: str, out: Path, checkpoint_for, values: list[float] | None = None, **overrides) -> Path:
    cfg = _read(CONFIGS / config)
    init = cfg["model"]["init_args"]
    init["checkpoint"] = str(checkpoint_for(init["checkpoint"]))
    if values is not None:
        init["sweep"]["values"] = values
    rule_args = init["sweep"]["cfg_rule"].setdefault("init_args", {}) or {}
    if "guide_checkpoint" in rule_args:
        rule_args["guide_checkpoint"] = str(checkpoint_for(rule_args["guide_checkpoint"]))
    init.update(output_dir=str(out), **overrides)
    cfg["trainer"]["default_root_dir"] = str(out)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _predict(path: Path) -> None:
    cli("predict", "--config", path, "--trainer.enable_progress_bar", "false")


@pytest.fixture
def no_pictures(monkeypatch):
    from lightning_guidance.io import shards

    monkeypatch.setattr(shards, "save_sample_picture", lambda samples, labels, path, **kw: Path(path))


def test_every_variant_has_a_config_per_family():
    variants = {"cfg_interval", "cfg_rescale", "apg", "cfg_zero_star", "tangential_cfg", "autoguidance"}
    assert {f"fractal/sample_{v}.yaml" for v in variants} <= set(RULE_CONFIGS)
    assert {f"digits/sample_{v}.yaml" for v in variants | {"fdg", "pag", "slg", "seg"}} <= set(RULE_CONFIGS)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("config", RULE_CONFIGS)
def test_variant_config_runs_on_every_sampler(config, sampler, tiny_checkpoint, tmp_path, no_pictures):
    out = tmp_path / "samples"
    path = _rewrite(config, out, tiny_checkpoint, sampler=sampler, sampler_kwargs={"num_steps": 3}, values=[2.5],
                    samples_per_class=2, shard_size=64, batch_size=64)
    _predict(path)
    [shard] = sorted(out.glob("cfg_2.5/shard_*.npz"))
    x = read_shard(shard).samples
    assert torch.isfinite(x).all()
    rule = _read(CONFIGS / config)["model"]["init_args"]["sweep"]["cfg_rule"]
    made = json.loads((out / "manifest.json").read_text())["scales"]["2.5"]["config"]
    assert made["cfg_rule"]["class"] == rule["class_path"].rsplit(".", 1)[1]  # the rule is in the shard's hash
    if "guide_checkpoint" in (rule.get("init_args") or {}):
        # the worse model is named by its content digest, so a retrained guide makes these shards stale
        assert len(made["cfg_rule"]["guide"]["sha256"]) == 16


def test_rule_settings_enter_the_shard_hash(tiny_checkpoint, tmp_path, no_pictures):
    """Changing a rule's value makes the old shards another config's: predict refuses to mix them."""
    out = tmp_path / "samples"
    small = dict(sampler_kwargs={"num_steps": 2}, values=[2.0], samples_per_class=2)
    _predict(_rewrite("fractal/sample_cfg_rescale.yaml", out, tiny_checkpoint, **small))
    path = _rewrite("fractal/sample_cfg_rescale.yaml", out, tiny_checkpoint, **small)
    cfg = _read(path)
    cfg["model"]["init_args"]["sweep"]["cfg_rule"]["init_args"]["guidance_rescale"] = 0.3
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="stale shard .*made with another sampling config"):
        _predict(path)


def test_frequency_decoupled_guidance_is_refused_on_the_fractal(tiny_checkpoint, tmp_path):
    path = _rewrite("digits/sample_fdg.yaml", tmp_path / "fdg", tiny_checkpoint, samples_per_class=2)
    cfg = _read(path)
    cfg["model"]["init_args"]["checkpoint"] = str(tiny_checkpoint("runs/fractal/cfg/checkpoints/last.ckpt"))
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match=r"FrequencyDecoupledGuidance splits images .* not images"):
        _predict(path)
    assert not list((tmp_path / "fdg").rglob("*.npz"))


def test_autoguidance_refuses_a_guide_trained_for_other_data(tiny_checkpoint, tmp_path):
    path = _rewrite("fractal/sample_autoguidance.yaml", tmp_path / "ag", tiny_checkpoint, samples_per_class=2)
    cfg = _read(path)
    cfg["model"]["init_args"]["sweep"]["cfg_rule"]["init_args"]["guide_checkpoint"] = str(
        tiny_checkpoint("runs/digits/cfg/checkpoints/last.ckpt"))
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="train the worse model on the same data"):
        _predict(path)


@pytest.mark.parametrize("config", ["digits/sample_pag.yaml", "digits/sample_slg.yaml", "digits/sample_seg.yaml"])
def test_attention_perturbation_is_refused_on_the_fractal_mlp(config, tiny_checkpoint, tmp_path):
    path = _rewrite(config, tmp_path / "pag", tiny_checkpoint, samples_per_class=2)
    cfg = _read(path)
    cfg["model"]["init_args"]["checkpoint"] = str(tiny_checkpoint("runs/fractal/cfg/checkpoints/last.ckpt"))
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="MLPDenoiser has no self-attention layers"):
        _predict(path)
