"""A shard's identity covers everything that changes its content, and so does the flow's neighbour-cache key.

Every init argument of ``SamplingModule``, of each guidance term, CFG rule, guide classifier and sampler, and of
``RectifiedFlowPostprocessor`` is listed here: either it changes the identity (checked by changing it alone and
seeing the description change, and for ``SamplingModule`` by a real ``predict`` into the folder of a finished run,
which must refuse the old shards as stale) or it is declared result-neutral with the reason. A new argument that is
in neither list fails the enumeration; one dropped from the identity fails its change test.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
import yaml

from helpers import SAMPLING, cli, rewrite_sampling_config, tiny_checkpoints
from lightning_guidance.diffusion.sampling import SAMPLERS, sampler_options
from lightning_guidance.guidance import (CFGPlusClassifierGuidance, ClassifierGuidance, DivergenceGuidance,
                                         EntropyAdaptiveGuidance, LinearSchedule, OffTheShelfGuidance, TiltedGuidance)
from lightning_guidance.guidance import cfg_variants
from lightning_guidance.guidance.sweep import Sweep, describe_classifier, describe_rule, describe_term
from lightning_guidance.modules.rectified_flow import RectifiedFlowPostprocessor
from lightning_guidance.modules.sampling import SamplingModule
from lightning_guidance.nets import MLPDenoiser, OffTheShelfClassifier, TrainedClassifier

TOY_CFG, TOY_CLASSIFIER = "runs/toy1d/cfg/checkpoints/last.ckpt", "runs/toy1d/classifier/checkpoints/last.ckpt"


def init_args(cls) -> set[str]:
    return {n for n in inspect.signature(cls.__init__).parameters if n != "self"}


# ---- SamplingModule: the arguments, hashed or neutral ------------------------------------------------------------
#: argument -> (a change to it, as CLI arguments, or None where the test below builds it; the shard-config keys it
#: enters, or None where it enters as the shard's sample ids)
HASHED = {
    "checkpoint": (None, ("checkpoint",)),  # by the file's digest
    "use_ema": (("--model.init_args.use_ema", "false"), ("use_ema",)),
    "sampler": (("--model.init_args.sampler", "ddpm"), ("sampler", "sampler_kwargs")),
    "sampler_kwargs": (("--model.init_args.sampler_kwargs", "{num_steps: 3}"), ("sampler_kwargs",)),
    "seed": (("--model.init_args.seed", "1"), ("seed",)),
    "classes": (("--model.init_args.classes", "[1, 0]"), ("classes",)),
    "sweep": (("--model.init_args.sweep.cfg_scale", "2.5"), ("target", "value", "guidance", "cfg_scale")),
    "net": (None, ("net",)),  # a network given in place of the checkpoint's, by its structure
    # with a batch-coupled term only (tilted guidance): the samples of a batch shape each other's correction
    "batch_size": (("--model.init_args.batch_size", "2"), ("batch_size",)),
    # the ids a shard holds follow from these: a shard at the same path with other ids is stale, whatever its hash
    "samples_per_class": (("--model.init_args.samples_per_class", "3"), None),
    "shard_size": (("--model.init_args.shard_size", "2"), None),
    "save_trajectory": (("--model.init_args.save_trajectory", "true"), ("trajectory",)),  # the shard holds more
}
#: hashed, and changed alone in another test file (it needs a model this file does not build)
HASHED_ELSEWHERE = {
    "pretrained": "a diffusers folder's classes and store_latents (key 'pretrained'; tests/test_diffusers_cli.py: a "
                  "re-run without store_latents is told its shards are stale)",
}
NEUTRAL = {
    "output_dir": "where the shards go, not what they hold",
    "batch_size": "without a batch-coupled term a sample depends on its id only (tests/test_cli.py shows the pixels)",
    "grid_per_class": "the manifest's picture only",
    "judge": "the test stage's grader; predict never reads it",
    "fd_name": "the test stage's metric name",
    "precision_recall_k": "the test stage's metric",
    "inception_weights": "the test stage's metric",
    "overwrite": "how a stale shard is met (regenerated or refused), not what a shard holds",
    "shard_part": "which shards this task writes, each the same as a single run would",
    "inception_reference": "the test stage's metric",
    "grade_dir": "where the test stage writes its table (a second judge's folder), not what a shard holds",
    "compile": "how the net runs, not what it computes (the same samples to float rounding: tests/test_compile.py)",
}
NEUTRAL_CHANGES = ("--model.init_args.batch_size", "3", "--model.init_args.grid_per_class", "1",
                   "--model.init_args.fd_name", "fd_other", "--model.init_args.precision_recall_k", "2",
                   "--model.init_args.shard_part", "[0, 1]")


def test_every_sampling_module_argument_is_hashed_or_declared_neutral():
    assert init_args(SamplingModule) == set(HASHED) | set(HASHED_ELSEWHERE) | set(NEUTRAL)


def test_every_hashed_argument_is_a_key_of_the_shard_config(tiny):
    """Each hashed argument's keys are in ``shard_config`` (a dropped one fails here even where another key happens
    to change with it, as the sampler's options do with the sampler)."""
    net = MLPDenoiser(data_dim=1, num_classes=2, hidden_dim=16, num_layers=3)  # the tiny toy checkpoint's
    sweep = Sweep("guidance", [1.0], 1.5, [TiltedGuidance(TrainedClassifier(str(tiny(TOY_CLASSIFIER))))])
    config = SamplingModule(str(tiny(TOY_CFG)), sweep=sweep, net=net, output_dir="unused",
                            save_trajectory=True).shard_config(1.0)
    for argument, (_, keys) in HASHED.items():
        assert set(keys or ()) <= set(config), f"{argument}: {set(keys or ()) - set(config)} not in the shard config"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory)


def _finished_run(tiny, folder: Path, term: dict) -> Path:
    """A finished toy predict (guidance sweep at v = 1, s = 1.5, one term) in ``folder``; its config file."""
    path = rewrite_sampling_config((SAMPLING["toy"], "guidance/cg.yaml"), folder, tiny, values=[1.0],
                                   sampler_kwargs={"num_steps": 2}, samples_per_class=2, shard_size=8, batch_size=4)
    cfg = yaml.safe_load(path.read_text())
    cfg["model"]["init_args"]["sweep"].update(cfg_scale=1.5, terms=[term])
    path.write_text(yaml.safe_dump(cfg))
    cli("predict", "--config", path, "--trainer.enable_progress_bar", "false")
    assert len(list(folder.glob("guidance_1/shard_*.npz"))) == 1
    return path


def _term(tiny, name: str = "ClassifierGuidance", **args) -> dict:
    classifier = {"class_path": "lightning_guidance.nets.TrainedClassifier",
                  "init_args": {"checkpoint": str(tiny(TOY_CLASSIFIER))}}
    return {"class_path": f"lightning_guidance.guidance.{name}", "init_args": {"scale": 1.0, "classifier": classifier,
                                                                              **args}}


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """(the run's config, its folder) of a guided toy predict without a batch-coupled term."""
    folder = tmp_path_factory.mktemp("identity") / "samples"
    return _finished_run(tiny, folder, _term(tiny)), folder


def _refused(config: Path, *change) -> str:
    with pytest.raises(ValueError, match=r"stale shard .*made with another sampling config") as err:
        cli("predict", "--config", config, "--trainer.enable_progress_bar", "false", *change)
    return str(err.value)


def _other_model(tiny, tmp_path: Path) -> Path:
    """The toy model's checkpoint with one weight changed: same architecture, another file digest."""
    ckpt = torch.load(tiny(TOY_CFG), map_location="cpu", weights_only=True)
    name = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    ckpt["state_dict"][name] = ckpt["state_dict"][name] + 0.01
    torch.save(ckpt, tmp_path / "other.ckpt")
    return tmp_path / "other.ckpt"


@pytest.mark.parametrize("argument", sorted(set(HASHED) - {"batch_size"}))
def test_changing_a_hashed_argument_refuses_the_old_shards(argument, finished, tiny, tmp_path):
    """Predict into the folder of a finished run with one argument changed: the shard there is another config's,
    so predict refuses it (before it would silently be kept as this config's). Catches an argument dropped from
    ``SamplingModule.shard_config`` (e.g. use_ema: shards of the raw weights taken for EMA shards)."""
    config, folder = finished
    change, _ = HASHED[argument]
    if argument == "checkpoint":
        change = ("--model.init_args.checkpoint", _other_model(tiny, tmp_path))
    if argument == "net":  # the checkpoint's own net spec, with another (weight-free) setting
        spec = torch.load(tiny(TOY_CFG), map_location="cpu", weights_only=True)["hyper_parameters"]["net"]
        spec["init_args"]["dropout"] = 0.25
        change = ("--model.init_args.net", yaml.safe_dump(spec, default_flow_style=True).strip())
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("shard_*.npz")}
    message = _refused(config, *change)
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("shard_*.npz")} == before  # nothing rewritten
    if argument in ("samples_per_class", "shard_size"):
        assert "samples_per_class, classes or shard_size changed" in message


def _term_scale(sweep: dict) -> None:
    sweep["terms"][0]["init_args"]["scale"] = 2.0  # a term's multiplier


def _guide_weights(sweep: dict) -> None:
    sweep["terms"][0]["init_args"]["classifier"]["init_args"]["use_ema"] = False  # the guide's raw weights


def _cfg_rule(sweep: dict) -> None:
    sweep["cfg_rule"] = {"class_path": "lightning_guidance.guidance.cfg_variants.CFGZeroStar"}


@pytest.mark.parametrize("change", [_term_scale, _guide_weights, _cfg_rule], ids=lambda f: f.__name__.strip("_"))
def test_changing_the_guidance_refuses_the_old_shards(change, finished, tmp_path):
    config, _ = finished
    cfg = yaml.safe_load(config.read_text())
    change(cfg["model"]["init_args"]["sweep"])
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(cfg))
    _refused(tmp_path / "changed.yaml")


def test_result_neutral_arguments_keep_the_old_shards(finished):
    """Every neutral argument changed at once (batch_size included: this run's term does not couple the batch):
    predict keeps the finished shard as this config's."""
    config, folder = finished
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("shard_*.npz")}
    cli("predict", "--config", config, "--trainer.enable_progress_bar", "false", *NEUTRAL_CHANGES)
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("shard_*.npz")} == before


def test_batch_size_enters_with_a_batch_coupled_term(tiny, tmp_path):
    config = _finished_run(tiny, tmp_path / "tilted", _term(tiny, "TiltedGuidance", tilt=-0.2))
    _refused(config, *HASHED["batch_size"][0])


# ---- the guidance settings: every argument changes the description, or is declared neutral ------------------------
class _Classifier(torch.nn.Module):
    num_classes, data_shape = 2, (1,)

    def forward(self, x, t=None):
        return torch.cat([x, -x], dim=1)


TERMS = [ClassifierGuidance, OffTheShelfGuidance, CFGPlusClassifierGuidance, TiltedGuidance, EntropyAdaptiveGuidance,
         DivergenceGuidance]
RULES = [getattr(cfg_variants, name) for name in cfg_variants.__all__]
#: a different valid value for the arguments whose type alone does not give one
OTHER = {"input": "x_t", "mode": "bonus", "divergence": "hellinger", "space": "x0", "sigma_hi": 3.0, "stop": 0.5,
         "layers": [1], "level_weights": [1.0, 0.25], "parallel_weights": [0.5, 1.0], "guide_checkpoint": "other.ckpt",
         "edm_g_max": 0.01, "momentum": None, "clip_x0": True, "sine_reference": "linear-250", "schedule": LinearSchedule(1.0, 0.5),
         "seg_guidance_stop": 0.5}
#: arguments that cannot change a sample, with the reason
NEUTRAL_GUIDANCE = {"classifier": "described on its own: its class, settings and weights file (below)"}


def _other(name: str, default):
    if isinstance(default, bool):
        return not default
    if isinstance(default, (int, float)) and math.isfinite(default):
        return default + 0.125 if isinstance(default, float) else default + 1
    raise AssertionError(f"no alternative value for {name}={default!r}: add one to OTHER")


@pytest.mark.parametrize("cls", TERMS + RULES, ids=lambda c: c.__name__)
def test_every_guidance_argument_enters_the_identity(cls, tmp_path):
    """Each argument of each term and rule, changed alone, changes what the shard config records. Catches an
    attribute renamed or kept private (``describe_term`` / ``settings`` record the public plain values)."""
    is_term = cls in TERMS
    describe = (lambda obj: describe_term(obj)) if is_term else (lambda obj: describe_rule(obj))
    params = {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"}
    base = {"classifier": _Classifier()} if is_term else {}
    other = dict(OTHER)
    if cls is cfg_variants.Autoguidance:  # the worse model enters by its file's digest
        for name in ("bad.ckpt", "other.ckpt"):
            (tmp_path / name).write_bytes(name.encode())
        base["guide_checkpoint"], other["guide_checkpoint"] = str(tmp_path / "bad.ckpt"), str(tmp_path / "other.ckpt")
    if cls is cfg_variants.GuidanceInterval:  # it needs an interval
        base["sigma_hi"] = 5.0
    reference = describe(cls(**base))
    for name, default in params.items():
        if name in NEUTRAL_GUIDANCE:
            continue
        default = base.get(name, default)
        args = {**base, name: other[name] if name in other else _other(name, default)}
        assert describe(cls(**args)) != reference, f"{cls.__name__}({name}=...) leaves the shard identity unchanged"


def test_every_guide_classifier_argument_enters_the_identity(tiny):
    """A suite classifier by its weights file and use_ema; an off-the-shelf one by its file and every setting that
    changes its logits (declared neutral: frozen, strict_swap, allow_random_init)."""
    ema, raw = TrainedClassifier(str(tiny(TOY_CLASSIFIER))), TrainedClassifier(str(tiny(TOY_CLASSIFIER)), use_ema=False)
    assert describe_classifier(ema) != describe_classifier(raw)
    assert init_args(TrainedClassifier) == {"checkpoint", "use_ema", "temperature"}  # the file enters by digest
    tempered = TrainedClassifier(str(tiny(TOY_CLASSIFIER)), temperature=2.0)
    assert len({str(describe_classifier(c)) for c in (ema, raw, tempered)}) == 3
    neutral = {"frozen": "requires_grad and eval mode only", "strict_swap": "whether a partial swap is refused",
               "allow_random_init": "allows no weights file; the identity then says 'random init'",
               "torchvision_weights": "read only for its input preset: the resolved size, mean and std are recorded",
               "weights_path": "by the file's digest", "source": "in the settings", "arch": "in the settings",
               "class_map": "as class_index"}
    base = dict(source="timm", arch="resnet10t", allow_random_init=True, input_size=32)
    reference = describe_classifier(OffTheShelfClassifier(**base))
    for name, value in {"softplus_beta": 3.0, "input_size": 16, "interpolation": "nearest", "mean": [0.5] * 3,
                        "std": [0.25] * 3, "model_kwargs": {"drop_rate": 0.5}, "class_map": [3, 1]}.items():
        assert describe_classifier(OffTheShelfClassifier(**{**base, name: value})) != reference, name
    assert init_args(OffTheShelfClassifier) == set(neutral) | {"softplus_beta", "input_size", "interpolation", "mean",
                                                               "std", "model_kwargs"}


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_option_is_recorded_with_its_default(sampler, tiny):
    """The shard config records every option of the sampler, given or default, so a changed default is a new
    config too."""
    module = SamplingModule(str(tiny(TOY_CFG)), sampler=sampler, output_dir="unused")
    assert module.shard_config(1.0)["sampler_kwargs"] == sampler_options(sampler)


# ---- the flow's neighbour-cache key --------------------------------------------------------------------------------
FLOW_HASHED = {"k": 3, "same_class": True, "feature_net": "a net", "index": "ivf", "nlist": 3, "nprobe": 2}
FLOW_NEUTRAL = {
    "net": "the velocity net, trained on the table, not part of it",
    "faiss_device": "the device of the search; an exact search gives the same table (IndexSettings.describe)",
    "neighbour_cache_dir": "where the table is stored",
    "class_conditional": "the velocity's conditioning", "lr": "training", "weight_decay": "training",
    "warmup_steps": "training", "flow_seed": "the per-step draws among the k columns, not the table",
    "integrator": "predict", "integrator_kwargs": "predict", "output_dir": "predict", "batch_size": "predict",
    "per_class": "the picture", "feature_batch_size": "rows of an eval-mode feature net do not depend on their batch",
}


def test_every_flow_argument_enters_the_neighbour_key_or_is_declared_neutral(tmp_path):
    """Each hashed argument, changed alone, gives another neighbour table (a rebuild into the same cache folder, the
    first table kept); the neutral ones, changed together, reuse it."""
    import lightning as L

    from lightning_guidance.data.generated import GeneratedShardsDataModule
    from lightning_guidance.io.shards import Shard, write_shard
    from lightning_guidance.nets import MLPClassifier

    assert init_args(RectifiedFlowPostprocessor) == set(FLOW_HASHED) | set(FLOW_NEUTRAL)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    write_shard(tmp_path / "shards" / "shard_0000000.npz",
                Shard(torch.randn(40, 2, generator=g), labels, torch.arange(40), torch.arange(40), 2.0, "x"))
    real = {"class_path": "lightning_guidance.data.toy.Fractal2DDataModule",
            "init_args": {"classes": [0, 1], "n_train": 200, "n_val": 20, "batch_size": 20}}
    from lightning_guidance.io.instantiate import instantiate

    dm = GeneratedShardsDataModule(shards=[str(tmp_path / "shards")], real=instantiate(real), batch_size=20)
    dm.setup("fit")
    cache = tmp_path / "cache"

    def table(**args):
        torch.manual_seed(0)
        if args.get("feature_net") == "a net":
            args["feature_net"] = MLPClassifier(2, 2, hidden_dim=4, num_layers=1)
        flow = RectifiedFlowPostprocessor(MLPDenoiser(data_dim=2, num_classes=2, hidden_dim=8),
                                          **{"k": 2, "neighbour_cache_dir": str(cache), **args})
        flow.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path)
        flow.find_neighbours(dm)
        return flow.neighbour_cache_reused

    assert table() is False and table() is True
    tables = 1
    for name, value in FLOW_HASHED.items():
        args = {name: value, **({"index": "ivf"} if name in ("nlist", "nprobe") else {})}
        assert table(**args) is False, f"{name} changed but the neighbour table was reused"
        tables += 1
        assert len(list(cache.glob("topk_*.npz"))) == tables
    assert table(class_conditional=False, lr=1e-2, flow_seed=3, per_class=2, feature_batch_size=7,
                 integrator="dopri5", batch_size=5) is True
