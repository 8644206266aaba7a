"""Wrong, empty, truncated and garbage files: each is one line naming the file and what to do (no traceback).

They go through the shell entry point (``console_main``), so what is checked is what a user sees: the exit message.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import CONFIGS, tiny_digits_fit, user_sees

from lightning_guidance.cli import console_main

TINY = ["--model.init_args.net.init_args.model_channels", "8", "--model.init_args.net.init_args.channel_mult", "[1]",
        "--data.init_args.batch_size", "16", "--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def cfg_ckpt(tmp_path_factory):
    return tiny_digits_fit(tmp_path_factory.mktemp("cfg"), 2)


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifier")
    from helpers import cli

    cli("fit", "--config", CONFIGS / "digits/classifier.yaml", "--trainer.default_root_dir", root,
        "--trainer.max_steps", "2", *TINY)
    return root / "checkpoints" / "last.ckpt"


def fit_cfg(root, *extra):
    return ["fit", "--config", CONFIGS / "digits/cfg.yaml", "--trainer.default_root_dir", root,
            "--trainer.max_steps", "3", *TINY, *extra]


def test_resume_from_a_checkpoint_of_another_class(monkeypatch, tmp_path, classifier_ckpt):
    line = user_sees(monkeypatch, *fit_cfg(tmp_path, "--ckpt_path", classifier_ckpt))
    assert f"cannot resume from {classifier_ckpt}" in line
    assert "modules.classifier.Classifier" in line and "this run trains lightning_guidance.modules.cfg_diffusion.CFGDiffusion" in line
    assert not (tmp_path / "checkpoints").exists()


def test_resume_with_an_override_that_contradicts_the_checkpoint(monkeypatch, tmp_path, cfg_ckpt):
    line = user_sees(monkeypatch, *fit_cfg(tmp_path, "--ckpt_path", cfg_ckpt,
                                           "--model.init_args.net.init_args.model_channels", "16"))
    assert f"cannot resume from {cfg_ckpt}" in line
    assert "model.init_args.net.init_args.model_channels: checkpoint 8, this run 16" in line


def test_resume_from_a_checkpoint_of_another_architecture(monkeypatch, tmp_path, cfg_ckpt):
    """Same hyper-parameters recorded, other weights (a checkpoint edited or written by other code)."""
    import torch

    ckpt = torch.load(cfg_ckpt, weights_only=True)
    name = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][name] = torch.zeros(3, 3)
    bad = tmp_path / "other.ckpt"
    torch.save(ckpt, bad)
    line = user_sees(monkeypatch, *fit_cfg(tmp_path / "run", "--ckpt_path", bad))
    assert f"cannot resume from {bad}" in line and "reshaped" in line and name in line


def test_a_classifier_checkpoint_given_to_sampling(monkeypatch, tmp_path, classifier_ckpt):
    line = user_sees(monkeypatch, "predict", "--config", CONFIGS / "digits/sampling.yaml",
                     "--trainer.default_root_dir", tmp_path, "--model.init_args.checkpoint", classifier_ckpt)
    assert f"checkpoint {classifier_ckpt} was written by lightning_guidance.modules.classifier.Classifier, " \
           "expected a lightning_guidance.modules.cfg_diffusion.CFGDiffusion checkpoint" in line


def damaged(path: Path, cfg_ckpt: Path, kind: str) -> Path:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(cfg_ckpt.read_bytes()[: cfg_ckpt.stat().st_size // 2])
    else:
        path.write_bytes(b"this is not a checkpoint\n" * 40)
    return path


@pytest.mark.parametrize("kind, says", [("empty", "is empty (0 bytes)"), ("truncated", "is truncated or damaged"),
                                        ("garbage", "is not a PyTorch checkpoint")])
def test_damaged_checkpoints(monkeypatch, tmp_path, cfg_ckpt, kind, says):
    bad = damaged(tmp_path / "bad.ckpt", cfg_ckpt, kind)
    for args in (fit_cfg(tmp_path / "run", "--ckpt_path", bad),
                 ["predict", "--config", CONFIGS / "digits/sampling.yaml", "--trainer.default_root_dir",
                  tmp_path / "out", "--model.init_args.checkpoint", bad]):
        line = user_sees(monkeypatch, *args)
        assert f"checkpoint {bad} {says}" in line and "re-create it" in line


@pytest.mark.parametrize("kind", ["empty", "truncated", "garbage"])
def test_damaged_shards(monkeypatch, tmp_path, cfg_ckpt, kind):
    out = tmp_path / "out"
    args = ["predict", "--config", CONFIGS / "digits/sampling.yaml", "--trainer.default_root_dir", out,
            "--trainer.enable_progress_bar", "false", "--model.init_args.checkpoint", cfg_ckpt,
            "--model.init_args.samples_per_class", "1", "--model.init_args.shard_size", "10",
            "--model.init_args.sampler_kwargs", "{num_steps: 2}", "--model.init_args.sweep.values", "[1.0]"]
    from helpers import cli

    cli(*args)
    shard = out / "cfg_1" / "shard_0000000.npz"
    good = shard.read_bytes()
    shard.write_bytes(b"" if kind == "empty" else good[: len(good) // 2] if kind == "truncated" else b"junk" * 99)
    line = user_sees(monkeypatch, *args)
    assert f"sample shard {shard}" in line and "overwrite true" in line
    cli(*args, "--model.init_args.overwrite", "true")  # the one fix the message names
    assert shard.read_bytes() == good


@pytest.mark.parametrize("text, says", [("", "is empty"), ("model: [unclosed\n", "is not valid YAML at line"),
                                        ("- just\n- a list\n", "is not a YAML mapping")])
def test_damaged_configs(monkeypatch, tmp_path, text, says):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    line = user_sees(monkeypatch, "predict", "--config", CONFIGS / "digits/sampling.yaml", "--config", config)
    assert f"config file {config} {says}" in line


def test_parser_error_comes_first_not_after_the_usage(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["cli.py", "fit", "--config", str(CONFIGS / "digits/cfg.yaml"),
                                      "--trainer.max_stepz", "3"])
    with pytest.raises(SystemExit) as exit_info:
        console_main()
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "max_stepz" in message.splitlines()[0]
    assert "usage:" not in capsys.readouterr().err


def test_traceback_on_request(monkeypatch, tmp_path, cfg_ckpt):
    bad = damaged(tmp_path / "bad.ckpt", cfg_ckpt, "empty")
    monkeypatch.setattr(sys, "argv", ["cli.py", *map(str, fit_cfg(tmp_path / "run", "--ckpt_path", bad))])
    monkeypatch.setenv("LG_TRACEBACK", "1")
    with pytest.raises(ValueError, match="is empty"):
        console_main()
