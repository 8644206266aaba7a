"""A researcher's first hour: every mistake below is one line (exit status 1) naming the key or file at fault and,
where one exists, the nearest valid name; ``--ckpt_path last``, the console, help, the checkpoint callbacks.

The bad inputs go through the shell entry point in this process (``console_main``: what a user sees is the exit
message); most fail while the config is parsed, before any work. ``BAD_CONFIGS`` lists the config and command-line
mistakes; the checkpoint, grading, compile and hint cases follow as their own tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import CONFIGS, ROOT, cli, read_yaml, rewrite_sampling_config, user_sees

from lightning_guidance.cli import console_main

TOY = ["--trainer.enable_progress_bar", "false", "--data.init_args.n_train", "256", "--data.init_args.n_val", "64",
       "--data.init_args.batch_size", "64", "--model.init_args.net.init_args.hidden_dim", "16"]
DIFFUSION = "lightning_guidance.modules.cfg_diffusion.CFGDiffusion"


def toy_fit(root: Path, *extra) -> Path:
    cli("fit", "--config", CONFIGS / "toy/cfg_1d.yaml", "--trainer.default_root_dir", root, "--trainer.max_steps",
        "2", *TOY, *extra)
    return root / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def toy_ckpt(tmp_path_factory) -> Path:
    return toy_fit(tmp_path_factory.mktemp("toy_cfg"))


def edited(tmp_path: Path, config: str, edit) -> Path:
    """``configs/<config>`` with ``edit(data)`` applied, written to ``tmp_path``."""
    data = read_yaml(CONFIGS / config)
    edit(data)
    path = tmp_path / Path(config).name
    path.write_text(yaml.safe_dump(data))
    return path


def configs_with_the_last_edited(tmp_path: Path, configs: str | tuple[str, ...], edit) -> list:
    """``--config`` arguments of ``configs`` in order (a dataset's sampling config, then a guidance file), the last
    one with ``edit`` applied."""
    *base, last = (configs,) if isinstance(configs, str) else configs
    return [*(x for c in base for x in ("--config", CONFIGS / c)), "--config", edited(tmp_path, last, edit)]


def _drop_net(c):
    del c["model"]["init_args"]["net"]


def _typo_p_uncond(c):
    c["model"]["init_args"]["p_uncnd"] = c["model"]["init_args"].pop("p_uncond")


def _typo_unet(c):
    c["model"]["init_args"]["net"]["class_path"] = "lightning_guidance.nets.MLPDenoisr"


def _typo_module(c):
    c["model"]["init_args"]["net"]["class_path"] = "lightning_guidance.netz.MLPDenoiser"


def _typo_cfg_rule(c):
    c["model"]["init_args"]["sweep"]["cfg_rule"]["class_path"] = "lightning_guidance.guidance.cfg_variants.CFGZeroStr"


def _typo_rule_arg(c):
    c["model"]["init_args"]["sweep"]["cfg_rule"]["init_args"]["zero_init_stepz"] = 1


def _typo_trainer_key(c):
    c["trainer"]["max_step"] = c["trainer"].pop("max_steps")


def _typo_top_key(c):
    c["modle"] = c.pop("model")


def _typo_callback_arg(c):
    c["trainer"]["callbacks"][0]["init_args"]["decayy"] = 0.9


def _wrong_type(c):
    c["model"]["init_args"]["lr"] = "fast"


TOY_CFG, ZERO_STAR = "toy/cfg_1d.yaml", ("fractal/sampling.yaml", "guidance/cfg_zero_star.yaml")
#: (id, subcommand, the config (or several combined: the last one is broken) and how it is broken (or None), extra
#: arguments, what the line must hold)
BAD_CONFIGS = [
    ("missing required net", "fit", (TOY_CFG, _drop_net), [],
     ["model.init_args.net: required by CFGDiffusion", "--model.init_args.net"]),
    ("YAML key typo", "fit", (TOY_CFG, _typo_p_uncond), [],
     ["model.init_args.p_uncnd (in ", "cfg_1d.yaml)", "no argument p_uncnd; did you mean p_uncond?"]),
    ("command-line key typo", "fit", None, ["--config", CONFIGS / TOY_CFG, "--model.init_args.p_uncnd", "0.2"],
     ["model.init_args.p_uncnd: CFGDiffusion has no argument p_uncnd; did you mean p_uncond?"]),
    ("class-path typo in a YAML", "fit", (TOY_CFG, _typo_unet), [],
     ["model.init_args.net.class_path (in ", "MLPDenoisr does not exist; did you mean "
      "lightning_guidance.nets.MLPDenoiser?"]),
    ("module typo in a class path", "fit", (TOY_CFG, _typo_module), [],
     ["lightning_guidance.netz.MLPDenoiser does not exist; did you mean lightning_guidance.nets.MLPDenoiser?"]),
    ("class-path typo on the command line", "fit", None,
     ["--config", CONFIGS / TOY_CFG, "--model", "lightning_guidance.modules.cfg_diffusion.CFGDifusion"],
     ["model.class_path: ", f"CFGDifusion does not exist; did you mean {DIFFUSION}?"]),
    ("short class-name typo", "fit", None, ["--config", CONFIGS / TOY_CFG, "--model", "CFGDifusion"],
     [f"model: no class named CFGDifusion; did you mean {DIFFUSION}?"]),
    ("CFG-rule typo", "predict", (ZERO_STAR, _typo_cfg_rule), [],
     ["model.init_args.sweep.cfg_rule.class_path (in ", "did you mean "
      "lightning_guidance.guidance.cfg_variants.CFGZeroStar?"]),
    ("CFG-rule argument typo", "predict", (ZERO_STAR, _typo_rule_arg), [],
     ["cfg_rule.init_args.zero_init_stepz (in ", "did you mean zero_init_steps?"]),
    ("logger without its required arguments", "fit", None,
     ["--config", CONFIGS / TOY_CFG, "--trainer.logger", "CSVLogger"],
     ["trainer.logger.init_args.save_dir: required by CSVLogger", "--trainer.logger.init_args.save_dir"]),
    ("logger class typo", "fit", None, ["--config", CONFIGS / TOY_CFG, "--trainer.logger", "TensorBoardLoger"],
     ["trainer.logger: no class named TensorBoardLoger; did you mean ", "TensorBoardLogger?"]),
    ("option prefix", "fit", None, ["--config", CONFIGS / TOY_CFG, "--trainer.max_step", "3"],
     ["unrecognized option --trainer.max_step; did you mean --trainer.max_steps?"]),
    ("trainer key typo in a YAML", "fit", (TOY_CFG, _typo_trainer_key), [],
     ["trainer.max_step (in ", "fit has no option trainer.max_step; did you mean trainer.max_steps?"]),
    ("top-level key typo", "fit", (TOY_CFG, _typo_top_key), [], ["modle (in ", "did you mean model?"]),
    ("callback argument typo", "fit", (TOY_CFG, _typo_callback_arg), [],
     ["trainer.callbacks[0].init_args.decayy (in ", "EMA has no argument decayy; did you mean decay?"]),
    ("value of the wrong type", "fit", (TOY_CFG, _wrong_type), [],
     ["model.init_args.lr (in ", "expected a float, got fast"]),
    ("negative CFG scale", "predict", None,
     ["--config", CONFIGS / "toy/sampling.yaml", "--model.init_args.sweep.values", "[-1.0, 2.0]"],
     ["CFG scale -1 < 0 refused", "no method here defines a negative scale"]),
    ("GPU accelerator without a GPU", "fit", None, ["--config", CONFIGS / TOY_CFG, "--trainer.accelerator", "gpu"],
     ["--trainer.accelerator gpu but this machine has no CUDA GPUs", "--trainer.accelerator cpu"]),
]


@pytest.mark.parametrize("sub, config, extra, expected", [pytest.param(*case[1:], id=case[0]) for case in BAD_CONFIGS])
def test_a_bad_config_is_one_line_naming_the_key(monkeypatch, tmp_path, sub, config, extra, expected):
    if "accelerator" in extra and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = [] if config is None else configs_with_the_last_edited(tmp_path, *config)
    line = user_sees(monkeypatch, sub, *args, *extra, "--trainer.default_root_dir", tmp_path / "run")
    for part in expected:
        assert part in line, (part, line)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any work


def test_debug_shows_the_parsers_whole_message(monkeypatch, capsys, tmp_path):
    bad = edited(tmp_path, TOY_CFG, _typo_p_uncond)
    monkeypatch.setattr(sys, "argv", ["cli.py", "fit", "--config", str(bad), "--debug"])
    with pytest.raises(SystemExit) as exit_info:
        console_main()
    assert "did you mean p_uncond?" in str(exit_info.value.code)
    err = capsys.readouterr().err
    assert "Does not validate against any of the Union subtypes" in err and "Option 'p_uncnd' is not accepted" in err


@pytest.mark.parametrize("argv, expected", [
    ([], ["give a subcommand: fit, validate, test, predict, study"]),
    (["studdy"], ["unknown subcommand 'studdy': did you mean study?", "fit, validate, test, predict, study"]),
    (["fitt", "--config", "x.yaml"], ["unknown subcommand 'fitt': did you mean fit?"]),
], ids=["no subcommand", "subcommand typo", "unknown subcommand"])
def test_subcommand_errors_list_study(monkeypatch, argv, expected):
    line = user_sees(monkeypatch, *argv)
    assert all(part in line for part in expected), line


def test_top_level_help_lists_study_without_importing_lightning():
    code = ("import sys; from lightning_guidance.cli import main; main(['--help']); "
            "print('LIGHTNING LOADED' if 'lightning' in sys.modules else 'NO LIGHTNING')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT).stdout
    assert "NO LIGHTNING" in out and "study" in out and "{fit,validate,test,predict,study}" in out


def test_model_help_is_short_and_says_what_each_argument_is(capsys):
    with pytest.raises(SystemExit):
        cli("predict", "--model.help", "SamplingModule")
    out = capsys.readouterr().out
    assert len(out.splitlines()) < 150, len(out.splitlines())  # 1,497 lines when it listed every nn.Module
    assert "torch.nn.Linear" not in out and "lightning_guidance.nets.UNet" in out
    assert "the diffusion model's checkpoint" in out and "``ddpm`` (ancestral), ``ddim`` or ``edm``" in out


def test_fit_help_names_the_suites_modules(capsys):
    with pytest.raises(SystemExit):
        cli("fit", "--help")
    out = "".join(capsys.readouterr().out.split())  # class paths are wrapped across lines
    for module in ("CFGDiffusion", "Classifier", "SamplingModule", "RectifiedFlowPostprocessor", "GradeSamples"):
        assert f".{module}," in out or f".{module};" in out, module


def _documented_classes():
    import importlib
    import inspect
    import pkgutil

    import lightning as L

    for package in ("modules", "callbacks", "data"):
        root = importlib.import_module(f"lightning_guidance.{package}")
        for info in pkgutil.iter_modules(root.__path__):
            module = importlib.import_module(f"{root.__name__}.{info.name}")
            for name, cls in vars(module).items():
                if (inspect.isclass(cls) and cls.__module__ == module.__name__ and not name.startswith("_")
                        and issubclass(cls, (L.LightningModule, L.LightningDataModule, L.Callback,
                                             L.pytorch.loggers.Logger))):
                    yield cls


def test_every_module_and_callback_documents_its_arguments():
    """Each argument a config can set (of a LightningModule, data module, callback or logger of the suite) has its
    line under ``Args:``: what LightningCLI's help shows."""
    import inspect

    import docstring_parser

    missing = []
    for cls in _documented_classes():
        if "__init__" not in vars(cls):
            continue
        params = [p for p, v in inspect.signature(cls.__init__).parameters.items()
                  if p != "self" and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
        documented = {p.arg_name for p in docstring_parser.parse(cls.__doc__ or "").params}
        missing += [f"{cls.__name__}.{p}" for p in params if p not in documented]
    assert not missing, missing


# ---- checkpoints checked by what they are -------------------------------------------------------------------------
def test_a_diffusion_checkpoint_as_guidance_classifier_is_refused_at_construction(monkeypatch, tmp_path, toy_ckpt):
    config = rewrite_sampling_config(("toy/sampling.yaml", "guidance/cg.yaml"), tmp_path / "out", lambda _: toy_ckpt)
    line = user_sees(monkeypatch, "predict", "--config", config)
    assert f"classifier checkpoint {toy_ckpt} was written by {DIFFUSION}" in line
    assert "expected a lightning_guidance.modules.classifier.Classifier checkpoint" in line
    assert not list((tmp_path / "out").rglob("shard_*.npz"))


def test_a_diffusion_checkpoint_as_judge_names_its_class(monkeypatch, tmp_path, toy_ckpt):
    line = user_sees(monkeypatch, "test", "--config", CONFIGS / "digits/grade.yaml", "--model.init_args.samples",
                     tmp_path, "--model.init_args.judge.init_args.checkpoint", toy_ckpt)
    assert f"the judge's classifier checkpoint {toy_ckpt} was written by {DIFFUSION}" in line
    assert "noisy" not in line


def test_a_checkpoint_of_another_version_names_the_argument(monkeypatch, tmp_path, toy_ckpt):
    ckpt = torch.load(toy_ckpt, weights_only=True)
    ckpt["hyper_parameters"]["clip_denoised"] = ckpt["hyper_parameters"].pop("clip_x0")
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    line = user_sees(monkeypatch, "predict", "--config", CONFIGS / "toy/sampling.yaml",
                     "--model.init_args.checkpoint", old, "--trainer.default_root_dir", tmp_path / "out")
    assert f"checkpoint {old} records arguments CFGDiffusion does not take: clip_denoised (nearest: clip_x0)" in line


def test_a_missing_checkpoint_names_the_config_of_its_family(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no runs/ here: the fractal model was never trained
    line = user_sees(monkeypatch, "predict", "--config", CONFIGS / "fractal/sampling.yaml")
    assert "checkpoint not found: runs/fractal/cfg/checkpoints/last.ckpt" in line
    assert "train it first with: python cli.py fit --config" in line and "configs/fractal/cfg.yaml" in line


def test_a_timm_file_with_another_head_names_model_kwargs(monkeypatch, tmp_path):
    timm = pytest.importorskip("timm")
    weights = tmp_path / "my_resnet18.pth"
    torch.save(timm.create_model("resnet18", num_classes=7).state_dict(), weights)

    def timm_guide(c):
        term = c["model"]["init_args"]["sweep"]["terms"][0]["init_args"]
        term["classifier"] = {"class_path": "lightning_guidance.nets.OffTheShelfClassifier",
                              "init_args": {"source": "timm", "arch": "resnet18", "weights_path": str(weights),
                                            "input_size": 32}}

    line = user_sees(monkeypatch, "predict", *configs_with_the_last_edited(
        tmp_path, ("digits/sampling.yaml", "guidance/offtheshelf.yaml"), timm_guide),
                     "--trainer.default_root_dir", tmp_path / "out")
    assert f"{weights} has a class layer of 7 outputs" in line and "add model_kwargs: {num_classes: 7}" in line


def test_compile_without_a_compiler_is_one_line(monkeypatch, tmp_path, toy_ckpt):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    line = user_sees(monkeypatch, "predict", "--config", CONFIGS / "toy/sampling.yaml",
                     "--model.init_args.checkpoint", toy_ckpt, "--model.init_args.compile", "true",
                     "--trainer.default_root_dir", tmp_path)
    assert "compile: true needs a C++ compiler on CPU" in line and "compile: false" in line


# ---- --ckpt_path last and the checkpoint callbacks ----------------------------------------------------------------
NO_LAST = """
trainer:
  callbacks:
    - {class_path: lightning_guidance.callbacks.ema.EMA, init_args: {decay: 0.99}}
    - {class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {save_last: false, every_n_train_steps: 4}}
"""


def test_every_fit_writes_last_ckpt_whatever_the_config_says(tmp_path):
    (tmp_path / "no_last.yaml").write_text(NO_LAST)
    ckpt = toy_fit(tmp_path / "run", "--config", tmp_path / "no_last.yaml")
    assert ckpt.is_file() and torch.load(ckpt, weights_only=True)["global_step"] == 2


def test_ckpt_path_last_without_last_ckpt_is_refused_naming_the_newest(monkeypatch, tmp_path, caplog):
    import logging

    root = tmp_path / "run"
    toy_fit(root, "--trainer.max_steps", "4")
    (root / "checkpoints" / "last.ckpt").unlink()
    others = sorted((root / "checkpoints").glob("*.ckpt"))
    line = user_sees(monkeypatch, "fit", "--config", CONFIGS / TOY_CFG, "--trainer.default_root_dir", root,
                     "--ckpt_path", "last", *TOY)
    assert f"--ckpt_path last: {root / 'checkpoints'} has no last.ckpt" in line
    assert f"--ckpt_path {others[-1]}" in line
    assert sorted((root / "checkpoints").glob("*.ckpt")) == others  # nothing moved or written
    caplog.set_level(logging.INFO)
    toy_fit(tmp_path / "empty", "--ckpt_path", "last")  # none at all: it says so and starts from step 0
    assert "--ckpt_path last: no checkpoint in" in caplog.text
    assert (tmp_path / "empty" / "checkpoints" / "last.ckpt").is_file()


def test_a_users_own_model_checkpoint_makes_no_v1_files(tmp_path):
    root = tmp_path / "run"
    toy_fit(root, "--trainer.callbacks+=ModelCheckpoint", "--trainer.max_steps", "6")
    toy_fit(root, "--trainer.callbacks+=ModelCheckpoint", "--trainer.max_steps", "10", "--ckpt_path", "last")
    names = sorted(p.name for p in (root / "checkpoints").glob("*.ckpt"))
    assert not [n for n in names if "-v1" in n], names
    assert "last.ckpt" in names and torch.load(root / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 10


# ---- the console ---------------------------------------------------------------------------------------------------
FALSE_LINES = ("No seed found", "FLOPs", "Found current_model_state", "Tip:", "site-packages", "TPU available")


def console(caplog, capsys, run) -> str:
    """What ``run()`` printed: its log lines (Lightning's logger), its warnings, what it wrote to the terminal."""
    import warnings

    caplog.clear()
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    return caplog.text + capsys.readouterr().out + "".join(warnings.formatwarning(w.message, w.category, w.filename,
                                                                                    w.lineno) for w in caught)


def test_a_fit_and_its_resume_print_no_false_line(tmp_path, caplog, capsys, monkeypatch):
    import logging

    caplog.set_level(logging.INFO)
    root = tmp_path / "run"
    first = console(caplog, capsys, lambda: toy_fit(root, "--trainer.log_every_n_steps", "50"))
    resume = console(caplog, capsys, lambda: toy_fit(root, "--trainer.max_steps", "4", "--ckpt_path", "last",
                                                     "--trainer.log_every_n_steps", "50"))
    for text in (first, resume):
        assert not [bad for bad in FALSE_LINES if bad in text], text
        assert "CFGDiffusion: 5.2 K parameters" in text  # the one-line model summary
        # a fit shorter than the logging interval says why metrics.csv got no row
        assert "no training metrics were logged" in text and "--trainer.log_every_n_steps 50" in text
    assert "Restored all states from the checkpoint" in resume
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # as in a fresh process: the fits above set it
    predict = console(caplog, capsys, lambda: cli(  # a config that names no seed
        "predict", "--config", CONFIGS / "toy/sampling.yaml", "--trainer.default_root_dir", tmp_path / "samples",
        "--model.init_args.checkpoint", root / "checkpoints/last.ckpt", "--model.init_args.samples_per_class", "4",
        "--model.init_args.sampler_kwargs", "{num_steps: 2}", "--trainer.enable_progress_bar", "false"))
    assert "Seed set to 0" in predict and not [bad for bad in FALSE_LINES if bad in predict], predict


def test_the_progress_bar_times_the_run_not_the_epoch():
    """The training task keeps its start time across epochs (Lightning's bar resets it, and its clock, each epoch)."""
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    from lightning_guidance.callbacks.progress import StepProgressBar

    starts = []

    class Clock(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            bar = trainer.progress_bar_callback
            starts.append(bar.progress.tasks[bar.train_progress_bar_id].start_time)

    trainer = L.Trainer(max_steps=12, callbacks=[StepProgressBar(), Clock()], logger=False, enable_checkpointing=False,
                        enable_model_summary=False, limit_val_batches=0, accelerator="cpu")
    trainer.fit(BoringModel(), torch.utils.data.DataLoader(torch.randn(16, 32), batch_size=4))  # 4 steps an epoch
    assert len(starts) == 3 and len(set(starts)) == 1, starts


# ---- installs and TensorBoard --------------------------------------------------------------------------------------
def test_dependencies_are_ranges_and_constraints_pin_them():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    pins = {k.lower().replace("_", "-"): v for k, v in pins.items()}
    for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
        if requirement.startswith("lightning-guidance"):
            continue
        name, _, spec = requirement.partition(">=")
        name = name.split("[")[0].strip().lower().replace("_", "-")
        assert "==" not in requirement and ",<" in spec, requirement  # a range with an upper bound
        assert pins.get(name) == spec.split(",")[0], (name, pins.get(name), spec)  # the lower bound is the tested one
    assert "-c constraints.txt" in (ROOT / ".ci/run").read_text()


def test_tensorboard_logger_with_the_runs_root(tmp_path):
    pytest.importorskip("tensorboard")
    root = tmp_path / "run"
    for steps, resume in (("2", []), ("4", ["--ckpt_path", "last"])):
        toy_fit(root, "--trainer.max_steps", steps, "--trainer.logger", "TensorBoardLogger",
                "--trainer.logger.save_dir", root, "--trainer.log_every_n_steps", "1", *resume)
    assert len(list(root.glob("lightning_logs/version_*/events.out.tfevents.*"))) == 2
    assert torch.load(root / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 4


def test_an_image_grid_has_a_title_and_each_rows_class(monkeypatch, tmp_path):
    from lightning_guidance.io import figures

    drawn = {}

    def keep(fig, path):
        ax = fig.axes[0]
        drawn.update(title=ax.get_title(), rows=[t.get_text() for t in ax.get_yticklabels()])
        return figures.pyplot().close(fig)

    monkeypatch.setattr(figures, "_save", keep)
    labels = torch.tensor([2, 0, 2, 1, 0, 1])
    figures.save_sample_picture(torch.rand(6, 1, 8, 8) * 2 - 1, labels, tmp_path / "grid.png", title="cfg scale 3")
    assert drawn == {"title": "cfg scale 3", "rows": ["class 0", "class 1", "class 2"]}
