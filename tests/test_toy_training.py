"""Trained for real on the exact toy data, then judged by the exact mixture (the oracle), on all three samplers.

The 1D run is short enough for the default suite; the fractal's thin branches need a longer run (``slow``).
Mean exact log-density is quoted beside the median: on the fractal a few samples just off a thin branch have
log-densities of -100 or less and dominate the mean, so the median and the share of samples inside the real
data's 1 % log-density quantile are what the slow test asserts.
"""

from __future__ import annotations

import pytest
import torch

from helpers import CONFIGS, cli
from lightning_guidance.modules.cfg_diffusion import CFGDiffusion

SAMPLERS = [("ddpm", {"num_steps": 100}), ("ddim", {"num_steps": 50}), ("edm", {"num_steps": 32})]


def _train_and_judge(tmp_path, config, max_steps, *overrides):
    cli("fit", "--config", CONFIGS / config, "--trainer.default_root_dir", tmp_path, "--trainer.max_steps", max_steps,
        "--trainer.enable_progress_bar", "false", *overrides)
    return CFGDiffusion.from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")


def _scores(model, mixture, n=2000):
    labels = torch.arange(n) % 2
    real, _ = mixture.sample(n, labels=labels, generator=torch.Generator().manual_seed(123))
    lp_real = mixture.log_prob(real.double())
    out = {}
    for sampler, kw in SAMPLERS:
        x = model.generate(labels, torch.arange(n), sampler=sampler, **kw).double()
        lp = mixture.log_prob(x)
        out[sampler] = dict(
            mean=lp.mean().item(), median=lp.median().item(),
            inside=(lp > lp_real.quantile(0.01)).double().mean().item(),
            class_acc=(mixture.class_posterior(x).argmax(1) == labels).double().mean().item(),
            std=[x[labels == k].std(0).max().item() for k in (0, 1)])
    return out, dict(mean=lp_real.mean().item(), median=lp_real.median().item())


@pytest.mark.parametrize("prediction", ["eps", pytest.param("v", marks=pytest.mark.slow)])  # v: 2.5 min, slow
def test_1d_mixture_samples_match_the_exact_density(tmp_path, prediction):
    """Trained for 1500 steps with each parameterisation, every sampler's samples are scored by the exact density.
    Catches a wrong v target or conversion (the v run would not learn the mixture), and samplers or training that
    blur or shrink the classes."""
    from lightning_guidance.toy.mixture1d import two_class_mixture_1d

    model = _train_and_judge(tmp_path, "toy/cfg_1d.yaml", 1500, "--model.init_args.prediction", prediction)
    sigma = 0.05
    scores, real = _scores(model, two_class_mixture_1d(mu=1.0, sigma=sigma))
    print(f"\n{prediction}: real {real}; " + "; ".join(f"{k}: {v}" for k, v in scores.items()))
    # Measured (seeded, 1500 steps; real mean 0.86, median 1.16 nats): mean log-density off by at most 0.22 (eps)
    # and 0.26 (v) nats, median by at most 0.13; per-class sample std 0.76-1.50 sigma (eps, DDIM the widest) and
    # 0.71-1.12 sigma (v); at least 98.3 % of samples inside the real 1 % log-density quantile. The bounds keep a
    # margin over those figures and no more: a sampler or target that blurs or squeezes a class by half (std 0.5x or
    # 2x) or shifts it fails them, which the former 0.35-nat bound on the mean alone let through.
    for sampler, s in scores.items():
        assert abs(s["mean"] - real["mean"]) < 0.3, (sampler, s, real)
        assert abs(s["median"] - real["median"]) < 0.2, (sampler, s, real)
        assert all(0.6 * sigma < std < 1.6 * sigma for std in s["std"]), (sampler, s)
        assert s["inside"] >= 0.97, (sampler, s)
        assert s["class_acc"] >= 0.99, (sampler, s)  # conditional samples land in their class


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_fractal_samples_match_the_exact_density(tmp_path):
    from lightning_guidance.toy.fractal2d import fractal_2d

    model = _train_and_judge(tmp_path, "fractal/cfg.yaml", 8000)
    scores, real = _scores(model, fractal_2d())
    # measured (8000 steps on 2 CPU cores; real median 0.74-0.77): DDPM median 0.52, 68 % inside the real 1 %
    # log-density quantile, class accuracy 0.996; DDIM median -0.37; EDM 63 % inside, accuracy 0.989
    # (after 2000 steps: DDPM median -1.8, 52 % inside). The bounds keep a margin below those figures.
    for sampler, s in scores.items():
        assert s["median"] > real["median"] - 1.5, (sampler, scores, real)
        assert s["inside"] > 0.55, (sampler, scores, real)
        assert s["class_acc"] >= 0.98, (sampler, scores, real)
