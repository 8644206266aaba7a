"""Evaluation callbacks and their shared pieces, against independent computations.

- Judge: its features are the input of the classifier's class layer (read here from the network's own layers).
- Rank split: every sample is evaluated exactly once whatever the number of ranks; padded repeats are dropped.
- CalibrationOverTime (Classifier validate through the CLI): ECE = torchmetrics' MulticlassCalibrationError,
  Smooth ECE = relplot's, on noised inputs rebuilt here from the per-sample seeds.
- SampleQualityEvaluation (CFGDiffusion fit through the CLI): the logged Fréchet distance is scipy's on samples
  regenerated here from the checkpoint's EMA weights with CFGDiffusion.generate; the judge is in no checkpoint.
- GuidanceDiagnostics / GuidanceTrace: sampling is unchanged by the trace; the recorded gradient RMS and confidence
  equal autograd on the states a probe term saw; closed forms for a saturated and a linear classifier; the CLI
  paths (CFGDiffusion validation, SamplingModule test) write their figures.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import relplot
import torch
from helpers import CONFIGS, cli, load
from test_sampling_test_stage import (
    cfg_checkpoint,
    frechet_scipy,
    judge_checkpoint,
    judge_logits_and_features,
    noisy_classifier_checkpoint,
    predict_shards,
    real_digits,
    stage_args,
)
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from torchmetrics.classification import MulticlassCalibrationError

from lightning_guidance.diffusion.noise import PerSampleNoise
from lightning_guidance.diffusion.guidance_setting import GuidanceSetting
from lightning_guidance.diffusion.sampling import build_denoiser, sample
from lightning_guidance.diffusion.schedules import VPSchedule
from lightning_guidance.guidance.trace import GuidanceTrace, summarize_trace
from lightning_guidance.metrics.judge import Judge
from lightning_guidance.data.rank_split import LoaderBatchIds, owned_block
from lightning_guidance.metrics.sample_quality import SampleQuality
from lightning_guidance.guidance import ClassifierGuidance, GuidanceTerm
from lightning_guidance.modules.cfg_diffusion import CFGDiffusion
from lightning_guidance.nets import TrainedClassifier
from lightning_guidance.metrics import FrechetDistance
from lightning_guidance.nets import EncoderClassifier, MLPClassifier


def last_metrics(csv_path: Path) -> dict[str, float]:
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    return {k: float(r[k]) for r in rows for k in r if r[k] not in ("", None) and k not in ("epoch", "step")}


# ---- judge ----------------------------------------------------------------------------------------------------
def test_judge_features_are_the_input_of_the_class_layer():
    mlp = MLPClassifier([1, 8, 8], 10, hidden_dim=24, num_layers=2).eval()
    judge = Judge(classifier=mlp)
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    logits, features = judge.logits_and_features(x)
    expected = mlp.body(x.flatten(1), torch.zeros(5))
    torch.testing.assert_close(features, expected)
    torch.testing.assert_close(logits, mlp.head(expected))
    assert judge.num_features == 24 and judge(x).shape == (5, 24)

    encoder = EncoderClassifier([1, 8, 8], 10, model_channels=8, channel_mult=[1], pool="attention").eval()
    judge = Judge(classifier=encoder)
    seen = []
    encoder.head.proj.register_forward_hook(lambda m, inp, out: seen.append(inp[0].flatten(1)))
    _, features = judge.logits_and_features(x)
    torch.testing.assert_close(features, seen[-1])
    assert judge.num_features == 8 and judge.training is False


def test_frechet_distance_of_the_judge_equals_sample_quality():
    """FrechetDistance with the judge as its extractor (images in) = SampleQuality's (judge features in, once)."""
    judge = Judge(classifier=MLPClassifier([1, 8, 8], 10, hidden_dim=6, num_layers=1))
    g = torch.Generator().manual_seed(0)
    real, fake = torch.rand(40, 1, 8, 8, generator=g) * 2 - 1, torch.rand(30, 1, 8, 8, generator=g) * 1.6 - 0.8
    labels = torch.arange(30) % 10
    direct = FrechetDistance(judge, name="fd_test")
    direct.update(real, real=True)
    direct.update(fake, real=False)
    quality = SampleQuality(judge, ["a"], fd_name="fd_test", knn_backend="torch")
    quality.update_real(real, torch.arange(40) % 10)
    quality.update_generated("a", fake, labels)
    assert quality.compute("a")["fd_test"] == pytest.approx(float(direct.compute()), rel=1e-9)
    with pytest.raises(ValueError, match="claims FID"):
        SampleQuality(judge, ["a"], fd_name="fid_digits")


# ---- rank split -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_owned_blocks_partition_the_ids(world_size):
    blocks = [owned_block(10, r, world_size) for r in range(world_size)]
    assert sorted(i for b in blocks for i in b) == list(range(10))
    assert all(len(b) > 0 for b in blocks)


@pytest.mark.parametrize("world_size, shuffle", [(1, False), (3, False), (4, True)])
def test_loader_batch_ids_drop_padded_repeats(world_size, shuffle):
    """10 items, batches of 3, Lightning-style DistributedSampler (pads with repeats): each item kept exactly once,
    and the ids are the items the batches really hold."""
    values = torch.arange(100, 110)
    dataset = TensorDataset(values)
    kept = []
    for rank in range(world_size):
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=3)
        loader = DataLoader(dataset, batch_size=3, sampler=sampler if world_size > 1 else None)
        trainer = SimpleNamespace(testing=False, val_dataloaders=loader)
        batch_ids = LoaderBatchIds()
        for batch_idx, (batch,) in enumerate(loader):
            ids, keep = batch_ids(trainer, batch_idx, len(batch))
            assert torch.equal(values[ids], batch)
            kept += ids[keep].tolist()
    assert sorted(kept) == list(range(10))


# ---- CalibrationOverTime ------------------------------------------------------------------------------------
CALIBRATION_CALLBACK = """
trainer:
  callbacks:
    - class_path: lightning_guidance.callbacks.calibration.CalibrationOverTime
      init_args: {seed: 5, num_buckets: 3}
"""


def test_calibration_over_time_equals_torchmetrics_and_relplot(tmp_path, tmp_path_factory):
    ckpt_path = noisy_classifier_checkpoint(tmp_path_factory)
    (tmp_path / "callbacks.yaml").write_text(CALIBRATION_CALLBACK)
    cli("validate", "--config", CONFIGS / "digits/classifier.yaml", "--config", tmp_path / "callbacks.yaml",
        "--trainer.default_root_dir", tmp_path, "--trainer.enable_progress_bar", "false", "--ckpt_path", ckpt_path)
    figures = json.loads((tmp_path / "logs" / "calibration" / "latest.json").read_text())
    assert (tmp_path / "logs" / "calibration" / "epoch0000.png").is_file()
    logged = last_metrics(tmp_path / "logs" / "metrics.csv")
    assert logged["val/ece"] == pytest.approx(figures["ece"], rel=1e-6)

    # the oracle: the classifier rebuilt from its checkpoint, the noise rebuilt from the per-sample seeds
    ckpt = load(ckpt_path)
    hp = ckpt["hyper_parameters"]
    net = EncoderClassifier(**hp["net"]["init_args"]).eval()
    net.load_state_dict({k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()})
    schedule = VPSchedule.from_name(hp["schedule"], hp["num_train_steps"])
    x0, y = real_digits()
    generators = [torch.Generator().manual_seed(5 * 1_000_003 + i) for i in range(len(y))]
    eces, smooth = [], []
    for k, (a, b) in enumerate([(0, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1)]):
        index = round((a + b) / 2 * 999)
        noise = torch.stack([torch.randn(1, 8, 8, generator=g) for g in generators])
        abar = schedule.alphas_cumprod[index].float()
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        with torch.no_grad():
            probs = net(x_t, torch.full((len(y),), index / 999)).softmax(1)
        ece = float(MulticlassCalibrationError(num_classes=10, n_bins=10, norm="l1")(probs, y))
        confidence, prediction = probs.max(1)
        sm = float(relplot.smECE(confidence.double().numpy(), (prediction == y).double().numpy()))
        name = f"t{a:.2f}-{b:.2f}"
        assert figures[f"ece_{name}"] == pytest.approx(ece, abs=1e-6), name
        assert figures[f"smooth_ece_{name}"] == pytest.approx(sm, abs=1e-6), name
        assert figures[f"acc_{name}"] == pytest.approx(float((prediction == y).double().mean()))
        eces.append(ece)
        smooth.append(sm)
    assert figures["ece"] == pytest.approx(np.mean(eces), abs=1e-6)  # the integral ECE
    assert figures["smooth_ece"] == pytest.approx(np.mean(smooth), abs=1e-6)


# ---- SampleQualityEvaluation and GuidanceDiagnostics during CFGDiffusion training -----------------------------
def training_callbacks(judge: Path, guide: Path) -> str:
    return f"""
trainer:
  callbacks:
    - class_path: lightning_guidance.callbacks.ema.EMA
      init_args: {{decay: 0.999}}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{save_last: true}}
    - class_path: lightning_guidance.callbacks.evaluation.SampleQualityEvaluation
      init_args:
        judge: {{class_path: lightning_guidance.metrics.judge.Judge, init_args: {{checkpoint: {judge}}}}}
        every_n_epochs: 1
        num_samples: 20
        sweep: {{values: [1.0, 3.0]}}
        sampler_kwargs: {{num_steps: 4}}
        seed: 11
        fd_name: fd_digits
    - class_path: lightning_guidance.callbacks.guidance_diagnostics.GuidanceDiagnostics
      init_args:
        sweep:
          terms:
            - class_path: lightning_guidance.guidance.ClassifierGuidance
              init_args:
                scale: 2.0
                classifier: {{class_path: lightning_guidance.nets.TrainedClassifier,
                              init_args: {{checkpoint: {guide}}}}}
        num_samples: 8
        sampler_kwargs: {{num_steps: 4}}
"""


@pytest.fixture(scope="module")
def trained_with_callbacks(tmp_path_factory):
    judge = judge_checkpoint(tmp_path_factory)
    guide = noisy_classifier_checkpoint(tmp_path_factory)
    root = tmp_path_factory.mktemp("cfg-with-evaluation")
    (root / "callbacks.yaml").write_text(training_callbacks(judge, guide))
    # 12 steps of 128 images = one epoch: the validation at its end sees the weights the checkpoint then saves;
    # no warm-up and a large learning rate, so that the raw weights run ahead of their average
    cli("fit", "--config", CONFIGS / "digits/cfg.yaml", "--config", root / "callbacks.yaml",
        "--trainer.default_root_dir", root, "--trainer.max_steps", "12", "--trainer.check_val_every_n_epoch", "1",
        "--model.init_args.warmup_steps", "0", "--model.init_args.lr", "0.01",
        "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "4",
        "--model.init_args.net.init_args.model_channels", "8", "--model.init_args.net.init_args.channel_mult", "[1]",
        "--data.init_args.batch_size", "128")
    return root, judge


def test_sample_quality_callback_evaluates_the_ema_weights(trained_with_callbacks):
    root, judge = trained_with_callbacks
    ckpt = load(root / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 12
    assert all(k.startswith("net.") for k in ckpt["state_dict"]), "an evaluation network landed in the checkpoint"
    logged = last_metrics(root / "logs" / "metrics.csv")
    report = json.loads((root / "logs" / "evaluation" / "epoch0000.json").read_text())
    assert (root / "logs" / "evaluation" / "epoch0000.png").is_file()

    x_real, _ = real_digits()
    _, real_features = judge_logits_and_features(judge, x_real)
    labels, seeds = torch.arange(20) % 10, 11 + torch.arange(20)
    for use_ema, s in ((True, 1.0), (True, 3.0), (False, 3.0)):
        model = CFGDiffusion.from_checkpoint(root / "checkpoints" / "last.ckpt", use_ema=use_ema)
        x = model.generate(labels, seeds, sampler="ddim", setting=GuidanceSetting(s), num_steps=4)
        logits, features = judge_logits_and_features(judge, x)
        fd = frechet_scipy(real_features, features)
        if use_ema:
            assert logged[f"val/fd_digits/cfg_{s:g}"] == pytest.approx(fd, rel=1e-3)
            assert report["rows"][f"cfg_{s:g}"]["fd_digits"] == pytest.approx(fd, rel=1e-4)
            assert report["rows"][f"cfg_{s:g}"]["judge_accuracy"] == pytest.approx(
                (logits.argmax(1) == labels.numpy()).mean(), abs=1e-6)
        else:  # the raw weights give another figure: the callback did evaluate the EMA
            assert abs(report["rows"]["cfg_3"]["fd_digits"] - fd) > 1e-3 * fd


def traced_by_hand(model, guide: Path, scale: float, num_samples: int, seed: int, cfg_scale: float = 1.0,
                   num_steps: int = 4) -> dict:
    """The diagnostics recomputed from library calls: ClassifierGuidance wrapped in a GuidanceTrace, DDIM over
    sample ids 0..n-1 (label ``id % 10``, seed ``seed + id``), summarised by ``summarize_trace``."""
    trace = GuidanceTrace(ClassifierGuidance(TrainedClassifier(str(guide)), scale=scale))
    ids = torch.arange(num_samples)
    model.generate(ids % 10, seed + ids, sampler="ddim", setting=GuidanceSetting(cfg_scale, terms=[trace]),
                   num_steps=num_steps)
    return summarize_trace(trace.sums, trace.vanishing_rms)


def assert_same_trace(report: dict, expected: dict) -> None:
    for key in ("t", "gradient_rms", "vanishing_fraction", "confidence"):
        assert report[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-7), key


def test_guidance_diagnostics_during_training_writes_its_figures(trained_with_callbacks, tmp_path_factory):
    """The report equals the trace recomputed here with the EMA weights of the step it ran at (the last one).
    Catches diagnostics taken with the raw weights, another scale, other seeds, or numbers that are not the trace."""
    root, _ = trained_with_callbacks
    report = json.loads((root / "logs" / "guidance_diagnostics" / "epoch0000.json").read_text())
    trace = report["terms"]["0_ClassifierGuidance"]
    assert report["num_samples"] == 8 and len(trace["t"]) == 4 and trace["t"][0] > trace["t"][-1]
    expected = traced_by_hand(CFGDiffusion.from_checkpoint(root / "checkpoints" / "last.ckpt"),
                              noisy_classifier_checkpoint(tmp_path_factory), scale=2.0, num_samples=8, seed=0)
    assert_same_trace(trace, expected)
    assert (root / "logs" / "guidance_diagnostics" / "epoch0000.png").is_file()
    logged = last_metrics(root / "logs" / "metrics.csv")
    assert logged["val/0_ClassifierGuidance/guidance_vanishing_fraction"] == pytest.approx(
        expected["mean_vanishing_fraction"], abs=1e-6)
    assert logged["val/0_ClassifierGuidance/guidance_gradient_rms"] == pytest.approx(
        expected["mean_gradient_rms"], rel=1e-4)


# ---- GuidanceTrace against autograd and closed forms ------------------------------------------------------
class StateProbe(GuidanceTerm):
    """Records every state it is shown; contributes nothing."""

    def __init__(self):
        super().__init__(1.0)
        self.states = []

    def gradient(self, state):
        self.states.append((state.x_t.clone(), state.t.clone(), state.y.clone()))
        return torch.zeros_like(state.x_t)


def test_trace_matches_autograd_and_leaves_sampling_unchanged(tmp_path_factory):
    model = CFGDiffusion.from_checkpoint(cfg_checkpoint(tmp_path_factory))
    classifier = TrainedClassifier(str(noisy_classifier_checkpoint(tmp_path_factory)))
    labels, seeds = torch.arange(6) % 10, torch.arange(6)

    def run(terms):
        return sample("ddim", build_denoiser(model), model.schedule, labels, PerSampleNoise(seeds), (1, 8, 8),
                      guidance=terms, num_steps=5)

    plain = run([ClassifierGuidance(classifier, scale=2.0)])
    probe, trace = StateProbe(), GuidanceTrace(ClassifierGuidance(classifier, scale=2.0), vanishing_rms=1e-3)
    traced = run([probe, trace])
    torch.testing.assert_close(traced, plain, rtol=0, atol=0)
    summary = summarize_trace(trace.sums, 1e-3)
    for step, (x_t, t, y) in enumerate(probe.states):
        leaf = x_t.clone().requires_grad_(True)
        log_p = torch.log_softmax(classifier(leaf, t), dim=1).gather(1, y[:, None]).sum()
        (grad,) = torch.autograd.grad(log_p, leaf)
        rms = grad.double().pow(2).flatten(1).mean(1).sqrt()
        with torch.no_grad():
            confidence = classifier(x_t, t).double().softmax(1).gather(1, y[:, None]).squeeze(1)
        assert summary["gradient_rms"][step] == pytest.approx(float(rms.mean()), rel=1e-5)
        assert summary["vanishing_fraction"][step] == pytest.approx(float((rms < 1e-3).double().mean()))
        assert summary["confidence"][step] == pytest.approx(float(confidence.mean()), rel=1e-6)
        assert summary["t"][step] == pytest.approx(float(t.double().mean()))


class FixedLogits(nn.Module):
    """Logits that ignore the input (a saturated, overconfident classifier): ∇ log p = 0 exactly."""

    num_classes = 3

    def forward(self, x, t=None):
        return torch.tensor([30.0, 0.0, 0.0]).expand(x.shape[0], 3) + 0 * x.flatten(1).sum(1, keepdim=True)


class LinearLogits(nn.Module):
    """``f_i(x) = w_i . x``: ``∇ log p_y = w_y - sum_j p_j w_j``, never zero while p is not one-hot."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))

    def forward(self, x, t=None):
        return x @ self.w.T


@pytest.mark.parametrize("classifier, vanishing, confidence", [(FixedLogits(), 1.0, 1.0), (LinearLogits(), 0.0, None)])
def test_trace_closed_forms(classifier, vanishing, confidence):
    from lightning_guidance.diffusion.denoiser import DenoiserOutput
    from lightning_guidance.diffusion.plug import GuidanceState

    x = torch.randn(5, 2)
    y = torch.zeros(5, dtype=torch.long)
    state = GuidanceState(x_t=x, t=torch.full((5,), 0.5), abar=torch.full((5,), 0.5), y=y,
                          out=DenoiserOutput(eps=torch.zeros_like(x), x0=x), step=0, num_steps=1, sampler="ddim")
    trace = GuidanceTrace(ClassifierGuidance(classifier, scale=3.0), vanishing_rms=1e-6)
    g = trace(state)
    summary = summarize_trace(trace.sums, 1e-6)
    assert summary["vanishing_fraction"] == [vanishing]
    if isinstance(classifier, LinearLogits):
        p = torch.softmax(x @ classifier.w.detach().T, dim=1)
        expected = 3.0 * (classifier.w.detach()[0] - p @ classifier.w.detach())
        torch.testing.assert_close(g, expected)
        assert summary["gradient_rms"][0] == pytest.approx(float((expected / 3).pow(2).mean(1).sqrt().mean()), rel=1e-6)
    else:
        assert summary["confidence"][0] == pytest.approx(confidence) and summary["gradient_rms"] == [0.0]


# ---- GuidanceDiagnostics in SamplingModule test -------------------------------------------------------------
def test_guidance_diagnostics_in_sampling_test(tmp_path, tmp_path_factory):
    judge, ckpt = judge_checkpoint(tmp_path_factory), cfg_checkpoint(tmp_path_factory)
    guide = noisy_classifier_checkpoint(tmp_path_factory)
    (tmp_path / "guided.yaml").write_text(f"""
model:
  init_args:
    sweep:
      target: guidance
      terms:
        - class_path: lightning_guidance.guidance.ClassifierGuidance
          init_args:
            scale: 1.0
            classifier: {{class_path: lightning_guidance.nets.TrainedClassifier,
                          init_args: {{checkpoint: {guide}}}}}
""")
    (tmp_path / "diagnostics.yaml").write_text("""
trainer:
  callbacks:
    - class_path: lightning_guidance.callbacks.guidance_diagnostics.GuidanceDiagnostics
      init_args: {num_samples: 10}
""")
    out = tmp_path / "samples"
    predict_shards(ckpt, out, "--config", tmp_path / "guided.yaml")
    args = stage_args(ckpt, out, judge)
    cli(*args[:3], "--config", tmp_path / "guided.yaml", "--config", tmp_path / "diagnostics.yaml", *args[3:])
    model = CFGDiffusion.from_checkpoint(ckpt)
    for scale in ("1", "3"):
        report = json.loads((out / "guidance_diagnostics" / f"guidance_{scale}.json").read_text())
        assert report["num_samples"] == 10 and len(report["terms"]["0_ClassifierGuidance"]["t"]) == 4
        # the module's own guidance at this sweep value, the shards' seeds: recomputed by hand
        assert_same_trace(report["terms"]["0_ClassifierGuidance"],
                          traced_by_hand(model, guide, scale=float(scale), num_samples=10, seed=0))
        assert (out / "guidance_diagnostics" / f"guidance_{scale}.png").is_file()
    table = json.loads((out / "metrics_table.json").read_text())
    assert "ClassifierGuidance (scale 3)" in table["rows"][1]["guidance"]


# ---- the shipped configs parse against the signatures --------------------------------------------------------
@pytest.mark.parametrize("command, configs", [
    ("fit", ["digits/judge.yaml"]),
    ("fit", ["digits/overconfident_classifier.yaml"]),
    ("fit", ["digits/calibrate.yaml"]),
    ("fit", ["digits/calibrate_overconfident.yaml"]),
    ("test", ["digits/sampling.yaml", "digits/grade_with_judge.yaml"]),
    ("fit", ["digits/cfg.yaml", "digits/cfg_evaluation.yaml"]),
    ("fit", ["digits/classifier.yaml", "digits/classifier_calibration.yaml"]),
])
def test_shipped_configs_parse(command, configs, capsys):
    """Each shipped config (and overlay) parses, and the printed config holds what the YAML files say, later files
    overriding earlier ones: the model's class and every plain value of its init_args. Catches an overlay that is
    ignored or overrides the wrong key, and a value silently renamed or dropped by the signatures."""
    import yaml

    args = [a for c in configs for a in ("--config", CONFIGS / c)]
    with pytest.raises(SystemExit) as exit_info:
        cli(command, *args, "--print_config")
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    expected_class, expected_args, paths = None, {}, {}
    for c in configs:
        config = yaml.safe_load((CONFIGS / c).read_text()) or {}
        model, paths = config.get("model") or {}, {**paths, **(config.get("paths") or {})}
        expected_class = model.get("class_path", expected_class)
        expected_args.update({k: v for k, v in (model.get("init_args") or {}).items()
                              if isinstance(v, (str, int, float, bool))})
    assert printed["model"]["class_path"] == expected_class
    for key, value in expected_args.items():
        if isinstance(value, str):  # ${paths.<name>}: the dataset config's path of that name
            value = re.sub(r"\$\{paths\.(\w+)\}", lambda m: paths[m.group(1)], value)
        assert printed["model"]["init_args"][key] == value, key
