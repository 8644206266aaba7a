"""The Lightning paths, run for real through the CLI: fit → predict → shards; resume; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import CONFIGS, cli, load, tiny_digits_fit


def _predict(ckpt, out, *extra):
    cli("predict", "--config", CONFIGS / "digits/sampling.yaml", "--trainer.default_root_dir", out,
        "--trainer.enable_progress_bar", "false",
        "--model.init_args.checkpoint", ckpt, "--model.init_args.output_dir", out,
        "--model.init_args.samples_per_class", "3", "--model.init_args.shard_size", "16",
        "--model.init_args.batch_size", "7", "--model.init_args.sampler_kwargs", "{num_steps: 4}", *extra)


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return tiny_digits_fit(root, max_steps=6)


def test_fit_writes_checkpoint_with_ema_and_config(digits_ckpt):
    ckpt = load(digits_ckpt)  # weights_only=True must work: nothing pickled but tensors and plain values
    assert ckpt["global_step"] == 6
    assert ckpt["hyper_parameters"]["net"]["class_path"] == "lightning_guidance.nets.UNet"
    ema, raw = ckpt["state_dict"], ckpt["current_model_state"]
    assert ema.keys() == raw.keys()
    # the EMA weights differ from the raw weights after a few steps (decay warm-up < 1)
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    assert (digits_ckpt.parent.parent / "logs" / "metrics.csv").is_file()


def test_predict_writes_shards_and_skips_finished_ones(digits_ckpt, tmp_path):
    out = tmp_path / "samples"
    _predict(digits_ckpt, out)
    shards = sorted(out.glob("cfg_*/shard_*.npz"))
    assert len(shards) == 3 * 2  # 3 scales × ceil(30 / 16) shards
    with np.load(sorted(out.glob("cfg_2/shard_*.npz"))[0]) as z:
        assert z["images"].dtype == np.uint8 and z["images"].shape == (16, 1, 8, 8)
        assert z["labels"].tolist() == [i % 10 for i in range(16)]
        assert z["seeds"].tolist() == list(range(16))
        assert float(z["value"]) == 2.0
    assert (out / "cfg_1" / "grid.png").is_file() and (out / "manifest.json").is_file()
    mtimes = {p: p.stat().st_mtime_ns for p in shards}
    _predict(digits_ckpt, out)  # a re-run skips every finished shard
    assert {p: p.stat().st_mtime_ns for p in shards} == mtimes
    with pytest.raises(ValueError, match="another sampling config"):
        _predict(digits_ckpt, out, "--model.init_args.sampler", "ddpm")


def test_predict_same_samples_whatever_the_batch_size(digits_ckpt, tmp_path):
    _predict(digits_ckpt, tmp_path / "a", "--model.init_args.sweep.values", "[2.0]")
    _predict(digits_ckpt, tmp_path / "b", "--model.init_args.sweep.values", "[2.0]", "--model.init_args.batch_size", "16")
    shards = sorted(p.name for p in (tmp_path / "a/cfg_2").glob("shard_*.npz"))
    assert shards == sorted(p.name for p in (tmp_path / "b/cfg_2").glob("shard_*.npz"))
    assert shards == ["shard_0000000.npz", "shard_0000016.npz"]  # both shards, not one of them
    for name in shards:
        with np.load(tmp_path / "a/cfg_2" / name) as a, np.load(tmp_path / "b/cfg_2" / name) as b:
            np.testing.assert_array_equal(a["images"], b["images"])
            np.testing.assert_array_equal(a["sample_ids"], b["sample_ids"])


PERIODIC_CHECKPOINTS = """
trainer:
  callbacks:
    - {class_path: lightning_guidance.callbacks.ema.EMA, init_args: {decay: 0.99}}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {save_last: true, every_n_train_steps: 4, save_top_k: -1, filename: "{step}"}
"""


def _toy_fit(root, max_steps, *extra):
    root.mkdir(parents=True, exist_ok=True)
    (root / "callbacks.yaml").write_text(PERIODIC_CHECKPOINTS)
    cli("fit", "--config", CONFIGS / "toy/cfg_1d.yaml", "--config", root / "callbacks.yaml",
        "--trainer.default_root_dir", root,
        "--trainer.max_steps", max_steps, "--trainer.enable_progress_bar", "false",
        "--data.init_args.n_train", "2000", "--data.init_args.batch_size", "256",  # 8 batches per epoch
        "--model.init_args.net.init_args.hidden_dim", "32", *extra)
    return load(root / "checkpoints" / "last.ckpt")


def _assert_same_training_state(a, b):
    assert a["global_step"] == b["global_step"]
    for key in ("state_dict", "current_model_state"):  # EMA and raw weights
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name} differs after resume"
    # every parameter's optimizer state (not just the first one's), and the LR scheduler: a resume that restored
    # only some of them, or restarted the warm-up, differs here
    opt_a, opt_b = a["optimizer_states"][0], b["optimizer_states"][0]
    assert opt_a["state"].keys() == opt_b["state"].keys() and len(opt_a["state"]) > 1
    for index, state in opt_a["state"].items():
        for name, value in state.items():
            assert torch.equal(value, opt_b["state"][index][name]), f"optimizer {name} of parameter {index} differs"
    assert opt_a["param_groups"] == opt_b["param_groups"]
    assert a["lr_schedulers"] == b["lr_schedulers"] and a["lr_schedulers"][0]["last_epoch"] == a["global_step"]


@pytest.mark.parametrize("killed_at", [8, 12], ids=["epoch-boundary", "mid-epoch"])
def test_killed_run_resumes_bit_for_bit(tmp_path, killed_at):
    """A run that dies after its periodic checkpoint at step k and is resumed from it ends exactly like a straight run."""
    straight = _toy_fit(tmp_path / "straight", 20)
    _toy_fit(tmp_path / "killed", 20)  # stands in for the first leg; only its step-k checkpoint is used
    ckpt = tmp_path / "killed" / "checkpoints" / f"step={killed_at}.ckpt"
    resumed = _toy_fit(tmp_path / "resumed", 20, "--ckpt_path", ckpt)
    _assert_same_training_state(straight, resumed)


def test_fit_again_with_more_steps_continues_exactly(tmp_path):
    """N steps straight == N/2 (a whole number of epochs), then ``--ckpt_path last`` to N."""
    straight = _toy_fit(tmp_path / "straight", 16)
    _toy_fit(tmp_path / "legs", 8)
    _assert_same_training_state(straight, _toy_fit(tmp_path / "legs", 16, "--ckpt_path", "last"))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.ckpt .*python cli.py fit"):
        _predict(tmp_path / "nope.ckpt", tmp_path / "out")


def test_unknown_class_and_sampler_are_clear_errors(digits_ckpt, tmp_path):
    with pytest.raises(ValueError, match=r"classes \[12\] out of range"):
        _predict(digits_ckpt, tmp_path / "o", "--model.init_args.classes", "[1, 12]")
    with pytest.raises(ValueError, match="unknown sampler 'heun'"):
        _predict(digits_ckpt, tmp_path / "o", "--model.init_args.sampler", "heun")


def test_wrong_image_shape_for_net_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"\(1, 8, 8\).*\(1, 16, 16\)"):
        tiny_digits_fit(tmp_path, 1, "--model.init_args.net.init_args.data_shape", "[1, 16, 16]")


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    with pytest.raises(FloatingPointError, match="loss became (nan|inf) at training step"):
        tiny_digits_fit(tmp_path, 3, "--model.init_args.lr", "1e30", "--model.init_args.warmup_steps", "0")


@pytest.mark.parametrize("family,missing", [("mnist", "MNIST"), ("cifar10", "cifar-10-batches-py"),
                                            ("imagenet", "imagenet")])
def test_real_dataset_configs_name_the_missing_data(tmp_path, family, missing):
    """The MNIST / CIFAR-10 / ImageFolder configs parse, build their nets, and say which path to fill."""
    with pytest.raises(FileNotFoundError, match=missing):
        cli("fit", "--config", CONFIGS / family / "cfg.yaml", "--trainer.default_root_dir", tmp_path,
            "--data.init_args.root", tmp_path / "data" / ("imagenet" if family == "imagenet" else ""),
            "--trainer.max_steps", "1", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true")


def test_unknown_schedule_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown noise schedule 'quadratic'"):
        tiny_digits_fit(tmp_path, 1, "--model.init_args.schedule", "quadratic")


def test_sample_grid_callback_draws_with_the_ema_weights(tmp_path):
    (tmp_path / "grid.yaml").write_text("""
trainer:
  callbacks:
    - {class_path: lightning_guidance.callbacks.ema.EMA, init_args: {decay: 0.9}}
    - {class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {save_last: true}}
    - class_path: lightning_guidance.callbacks.sample_grid.SampleGrid
      init_args: {every_n_epochs: 1, per_class: 2, sweep: {values: [1.0, 3.0]}, sampler_kwargs: {num_steps: 2}}
""")
    grids = []
    from lightning_guidance.callbacks import sample_grid

    original = sample_grid.save_sample_picture

    def spy(x, labels, path, **kw):
        grids.append(x.clone())
        return original(x, labels, path, **kw)

    sample_grid.save_sample_picture = spy
    try:
        tiny_digits_fit(tmp_path, 2, "--config", tmp_path / "grid.yaml", "--trainer.limit_train_batches", "2",
                        "--trainer.limit_val_batches", "1", "--trainer.check_val_every_n_epoch", "1")
    finally:
        sample_grid.save_sample_picture = original
    pictures = sorted((tmp_path / "logs" / "samples").glob("*.png"))
    assert [p.name for p in pictures] == ["epoch0000_cfg_1.png", "epoch0000_cfg_3.png"]
    # the grid was drawn from the EMA weights of the checkpoint, not the raw ones
    from lightning_guidance.modules.cfg_diffusion import CFGDiffusion

    ema = CFGDiffusion.from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    labels = torch.arange(10).repeat_interleave(2)
    again = ema.generate(labels, torch.arange(20), sampler="ddim", num_steps=2)  # s = 1, the first grid
    torch.testing.assert_close(grids[0], again)
