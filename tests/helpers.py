"""Shared test helpers: run the real CLI in-process on tiny overrides of the shipped configs."""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_guidance.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def cli(*args: str) -> None:
    main([str(a) for a in args])


def tiny_digits_fit(root: Path, max_steps: int = 4, *extra: str) -> Path:
    """fit configs/digits/cfg.yaml with a tiny UNet; returns the last checkpoint."""
    cli("fit", "--config", CONFIGS / "digits/cfg.yaml", "--trainer.default_root_dir", root,
        "--trainer.max_steps", max_steps, "--trainer.enable_progress_bar", "false",
        "--model.init_args.net.init_args.model_channels", "8", "--model.init_args.net.init_args.channel_mult", "[1]",
        "--data.init_args.batch_size", "16", "--trainer.log_every_n_steps", "2", *extra)
    return root / "checkpoints" / "last.ckpt"


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
