"""Classifier through the real CLI: the noisy classifier and its clean twin fit, log per-t-bucket validation
accuracy, save checkpoints that load through TrainedClassifier (weights_only), and run under DDP.

Oracles: accuracy and loss recomputed here from the checkpoint on the validation split; a spy network that records
the time the module calls it with; the exact class posterior of the 1D mixture (lightning_guidance.toy).
"""

from __future__ import annotations

import csv
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import CONFIGS, ROOT, cli, load
from lightning_guidance.data.digits import DigitsDataModule
from lightning_guidance.diffusion.schedules import VPSchedule
from lightning_guidance.nets import TrainedClassifier
from lightning_guidance.nets import MLPClassifier
from lightning_guidance.toy import two_class_mixture_1d

DIGITS_TINY = ("--model.init_args.net.init_args.model_channels", "8",
               "--model.init_args.net.init_args.channel_mult", "[1]", "--data.init_args.batch_size", "32")
TOY_TINY = ("--data.init_args.n_train", "512", "--data.init_args.n_val", "128", "--data.init_args.batch_size", "128")
CLASSIFIER_CONFIGS = {
    "digits/classifier.yaml": DIGITS_TINY,
    "digits/clean_classifier.yaml": DIGITS_TINY,
    "toy/classifier_1d.yaml": (*TOY_TINY, "--model.init_args.net.init_args.hidden_dim", "16"),
    "toy/linear_classifier_1d.yaml": TOY_TINY,
    "fractal/classifier.yaml": TOY_TINY,
}


def fit(config: str, root: Path, steps: int, *extra) -> Path:
    """fit ``config`` for ``steps`` with one validation at the last step; returns the last checkpoint."""
    cli("fit", "--config", CONFIGS / config, "--trainer.default_root_dir", root, "--trainer.max_steps", steps,
        "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
        "--trainer.check_val_every_n_epoch", "null", "--trainer.val_check_interval", steps, *extra)
    return root / "checkpoints" / "last.ckpt"


def last_metrics(root: Path) -> dict[str, float]:
    """The last logged value of every metric in ``<root>/logs/metrics.csv``."""
    with open(root / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {k: float(r[k]) for r in rows for k in r if r[k] not in ("", None) and k not in ("epoch", "step")}


def rebuild_net(ckpt: dict) -> torch.nn.Module:
    """The net from the checkpoint's recorded spec and its ``net.*`` weights, without the suite's loader."""
    spec = ckpt["hyper_parameters"]["net"]
    module, _, name = spec["class_path"].rpartition(".")
    net = getattr(importlib.import_module(module), name)(**spec["init_args"])
    net.load_state_dict({k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()})
    return net.eval()


# ---------------------------------------------------------------- every shipped classifier config


@pytest.mark.parametrize("config", sorted(CLASSIFIER_CONFIGS))
def test_shipped_classifier_config_fits_and_loads_through_trained_classifier(config, tmp_path):
    ckpt_path = fit(config, tmp_path, 3, *CLASSIFIER_CONFIGS[config])
    ckpt = load(ckpt_path)  # weights_only=True: nothing pickled but tensors and plain values
    hp = ckpt["hyper_parameters"]
    guide = TrainedClassifier(str(ckpt_path))
    assert (guide.noisy, guide.schedule_name, guide.num_train_steps) == (hp["noisy"], hp["schedule"],
                                                                        hp["num_train_steps"])

    net = rebuild_net(ckpt)
    assert guide.num_classes == net.num_classes
    x = torch.randn(5, *net.data_shape).clamp(-1, 1)
    t = torch.rand(5)
    with torch.no_grad():
        torch.testing.assert_close(guide(x, t), net(x, t), rtol=0, atol=0)
        torch.testing.assert_close(guide(x), net(x, None), rtol=0, atol=0)

    # a frozen guide: no parameter trains, it stays in eval mode, and the input gradient flows
    assert not any(p.requires_grad for p in guide.parameters())
    assert not guide.train().training
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(guide(leaf, t).logsumexp(1).sum(), leaf)
    assert grad.abs().sum() > 0


# ---------------------------------------------------------------- what the module feeds the net, what it logs


class TimeRecordingClassifier(MLPClassifier):
    """Spy: an MLPClassifier that records, per call, whether it was training and the time it got
    (YAML: ``test_noisy_classifier.TimeRecordingClassifier``)."""

    calls: list[tuple[bool, torch.Tensor | None]] = []

    def forward(self, x, t=None):
        TimeRecordingClassifier.calls.append((self.training, None if t is None else t.detach().clone()))
        return super().forward(x, t)


SPY_NET = ("{class_path: test_noisy_classifier.TimeRecordingClassifier, "
           "init_args: {data_shape: [1, 8, 8], num_classes: 10, hidden_dim: 32, num_layers: 1}}")


def digits_val_split() -> tuple[torch.Tensor, torch.Tensor]:
    dm = DigitsDataModule(val_fraction=0.2, seed=0)
    dm.setup("validate")
    x, y = zip(*dm.val_set)
    return torch.stack(x), torch.stack(y)


@pytest.mark.parametrize("config, noisy", [("digits/classifier.yaml", True), ("digits/clean_classifier.yaml", False)],
                         ids=["noisy", "clean-twin"])
def test_net_time_and_validation_metrics(config, noisy, tmp_path):
    TimeRecordingClassifier.calls.clear()
    ckpt_path = fit(config, tmp_path, 6, "--model.init_args.net", SPY_NET, "--data.init_args.batch_size", "64",
                    "--model.init_args.t_range", "[0.0, 0.5]", "--model.init_args.num_t_buckets", "2")
    train_times = [t for training, t in TimeRecordingClassifier.calls if training]
    assert len(train_times) == 6
    if noisy:  # x_t at uniformly drawn steps of t_range: times spread over [0, 0.5]
        times = torch.cat(train_times)
        assert times.min() >= 0 and times.max() <= 0.5 and times.unique().numel() > 50
    else:  # the clean twin calls its net with t=None, in training and in validation
        assert all(t is None for _, t in TimeRecordingClassifier.calls)

    metrics = last_metrics(tmp_path)
    buckets = sorted(k for k in metrics if k.startswith("val/acc_t"))
    assert buckets == (["val/acc_t0.00-0.25", "val/acc_t0.25-0.50"] if noisy else [])

    # val/acc_clean (and the clean twin's val/loss) recomputed from the checkpoint on the whole validation split
    x, y = digits_val_split()
    guide = TrainedClassifier(str(ckpt_path))
    with torch.no_grad():
        logits = guide(x, torch.zeros(len(x)) if noisy else None)
    assert metrics["val/acc_clean"] == pytest.approx((logits.argmax(1) == y).float().mean().item(), abs=1e-6)
    if not noisy:
        assert metrics["val/loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)


# ---------------------------------------------------------------- against the exact posterior of the 1D mixture


def exact_vs_learned_posterior(config: str, root: Path, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """p(y | x_t, t) of the exact 1D mixture and of ``config`` trained for ``steps``, on 4000 forward-noised draws
    at uniform steps (the classifier's training distribution), each (N, 2)."""
    ckpt_path = fit(config, root, steps, "--data.init_args.n_train", "8192", "--data.init_args.n_val", "256")
    guide = TrainedClassifier(str(ckpt_path))
    mixture, schedule = two_class_mixture_1d(mu=1.0, sigma=0.05), VPSchedule.from_name("linear", 1000)
    gen = torch.Generator().manual_seed(0)
    x0, _ = mixture.sample(4000, generator=gen)
    index = torch.randint(0, 1000, (4000,), generator=gen)
    x_t = schedule.q_sample(x0.double(), index, torch.randn(x0.shape, generator=gen, dtype=torch.float64))
    exact = mixture.noised_log_posterior(x_t, schedule.alphas_cumprod[index]).softmax(1)
    with torch.no_grad():
        learned = guide(x_t.float(), schedule.model_time(index).float()).softmax(1).double()
    return exact, learned


def test_mlp_classifier_learns_the_exact_noisy_posterior(tmp_path):
    exact, learned = exact_vs_learned_posterior("toy/classifier_1d.yaml", tmp_path, 150)
    assert (learned - exact).abs()[:, 1].mean() < 0.04  # measured 0.017 after 150 steps


def test_linear_classifier_learns_the_exact_decision_boundary(tmp_path):
    """The exact posterior's logit is ``2 mu sqrt(abar) x / (abar sigma^2 + 1 - abar)``: its slope in x changes
    by ~800x over t, which a logit linear in [x, t] cannot follow (mean |p - p_exact| ~0.15), but its boundary
    (x = 0 at every t) it can: it must agree with the exact decision wherever the exact posterior is sure."""
    exact, learned = exact_vs_learned_posterior("toy/linear_classifier_1d.yaml", tmp_path, 150)
    sure = exact.max(1).values > 0.75
    assert sure.sum() > 1000  # a third of the draws
    assert (learned.argmax(1) == exact.argmax(1))[sure].float().mean() > 0.99  # measured 1.000


# ---------------------------------------------------------------- DDP


def test_ddp_fit_completes_and_validation_reduces_over_ranks(tmp_path):
    """``python cli.py fit`` on two CPU processes (ddp_spawn): it finishes, writes its checkpoint, and the clean
    validation accuracy it logs (sync_dist over ranks, 180 images each) is the accuracy on the whole split."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "cli.py", "fit", "--config", "configs/digits/classifier.yaml",
           "--trainer.default_root_dir", str(tmp_path), "--trainer.strategy", "ddp_spawn", "--trainer.devices", "2",
           "--trainer.accelerator", "cpu", "--trainer.max_steps", "4", "--trainer.enable_progress_bar", "false",
           "--trainer.check_val_every_n_epoch", "null", "--trainer.val_check_interval", "4",
           "--trainer.log_every_n_steps", "1", *DIGITS_TINY, "--data.init_args.batch_size", "30",
           "--model.init_args.lr", "0.01", "--model.init_args.warmup_steps", "0"]  # past a constant prediction
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt_path = tmp_path / "checkpoints" / "last.ckpt"
    assert load(ckpt_path)["global_step"] == 4

    x, y = digits_val_split()
    assert len(y) % (2 * 30) == 0  # no padded duplicates in the distributed validation
    with torch.no_grad():
        correct = (TrainedClassifier(str(ckpt_path))(x, torch.zeros(len(x))).argmax(1) == y).float()
    # each rank alone sees every other image (DistributedSampler, no shuffle); their accuracies differ, so only a
    # reduction over both ranks gives the whole split's accuracy
    assert correct[0::2].mean() != correct[1::2].mean()
    metrics = last_metrics(tmp_path)
    assert metrics["val/acc_clean"] == pytest.approx(correct.mean().item(), abs=1e-6)
    assert len([k for k in metrics if k.startswith("val/acc_t")]) == 4  # per-bucket accuracy, reduced too
