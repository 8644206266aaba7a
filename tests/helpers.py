"""Shared test helpers: run the real CLI in-process on tiny overrides of the shipped configs; tiny checkpoints of
the shipped training configs and sampling YAMLs rewritten to use them; metrics run on forked gloo ranks."""

from __future__ import annotations

import functools
import os
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from lightning_guidance.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def cli(*args: str) -> None:
    main([str(a) for a in args])


def user_sees(monkeypatch, *args, lines: int = 1) -> str:
    """The exit message of ``cli.py <args>`` through the shell entry point (``console_main``): it must fail with a
    message of ``lines`` lines, the first starting with ``error:``, and exit status 1 (a string exit code)."""
    import sys

    import pytest

    from lightning_guidance.cli import console_main

    monkeypatch.setattr(sys, "argv", ["cli.py", *map(str, args)])
    monkeypatch.delenv("LG_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        console_main()
    message = exit_info.value.code
    assert isinstance(message, str), f"exit code {message!r}, expected a message (exit status 1)"
    assert message.startswith("error: ") and len(message.splitlines()) <= lines, message
    return message.splitlines()[0]


TWO_CPU_PROCESSES = ("--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp_spawn")


def cli_on_two_processes(*args: str) -> None:
    """``cli(*args)`` on two CPU processes (``ddp_spawn``, gloo), launched from this process.

    The two ranks are spawned interpreters that import the stack and unpickle the trainer, exactly as under
    ``python cli.py ... --trainer.strategy ddp_spawn``; only the launcher is this process instead of a third
    interpreter (an interpreter start-up costs ~5-10 s on a 2-core machine). The README's own command, ``python
    cli.py`` as a subprocess spawning its ranks, is run by test_noisy_classifier.py's DDP test. The launcher's
    environment variables (MASTER_PORT, ...) are restored afterwards, so no later run inherits them. Each rank runs
    one intra-op thread (OMP_NUM_THREADS, which the ranks inherit), as the tolerances of the tests were measured."""
    saved = dict(os.environ)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        cli(*args, *TWO_CPU_PROCESSES)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def tiny_digits_fit(root: Path, max_steps: int = 4, *extra: str) -> Path:
    """fit configs/digits/cfg.yaml with a tiny UNet; returns the last checkpoint."""
    cli("fit", "--config", CONFIGS / "digits/cfg.yaml", "--trainer.default_root_dir", root,
        "--trainer.max_steps", max_steps, "--trainer.enable_progress_bar", "false",
        "--model.init_args.net.init_args.model_channels", "8", "--model.init_args.net.init_args.channel_mult", "[1]",
        "--data.init_args.batch_size", "16", "--trainer.log_every_n_steps", "2", *extra)
    return root / "checkpoints" / "last.ckpt"


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def read_yaml(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


# ---- tiny checkpoints of the shipped training configs, and sampling YAMLs that use them ------------------------
# The checkpoints a sampling YAML names (``runs/<family>/<model>/checkpoints/last.ckpt``) are made by two-step fits
# of the shipped training config whose ``trainer.default_root_dir`` is that run folder, shrunk by these overrides
# (architecture kept, sizes cut).
_DIGITS_NET = ("--model.init_args.net.init_args.model_channels", "8",
               "--model.init_args.net.init_args.channel_mult", "[1]", "--data.init_args.batch_size", "16")
_TOY_DATA = ("--data.init_args.n_train", "256", "--data.init_args.n_val", "64", "--data.init_args.batch_size", "64")
_TOY_HIDDEN_16 = ("--model.init_args.net.init_args.hidden_dim", "16")
# a few larger steps: the clean twin's head starts at zero, and a guide with ~0 gradients would change no pixel
_FAST_LR = ("--trainer.max_steps", "8", "--model.init_args.lr", "0.01", "--model.init_args.warmup_steps", "0")
TINY_FITS = {
    "digits/cfg.yaml": _DIGITS_NET,
    "digits/cfg_autoguide_bad.yaml": _DIGITS_NET,
    "digits/classifier.yaml": (*_DIGITS_NET, *_FAST_LR),
    "digits/clean_classifier.yaml": (*_DIGITS_NET, *_FAST_LR),
    "toy/cfg_1d.yaml": (*_TOY_DATA, *_TOY_HIDDEN_16),
    "toy/classifier_1d.yaml": (*_TOY_DATA, *_TOY_HIDDEN_16),
    "toy/linear_classifier_1d.yaml": _TOY_DATA,
    "fractal/cfg.yaml": (*_TOY_DATA, *_TOY_HIDDEN_16),
    "fractal/cfg_autoguide_bad.yaml": (*_TOY_DATA, "--model.init_args.net.init_args.hidden_dim", "8"),
    "fractal/classifier.yaml": _TOY_DATA,
}
TRAINED_CLASSIFIER = "lightning_guidance.nets.TrainedClassifier"


def training_config_for(run_checkpoint: str) -> str:
    """The shipped config whose run folder holds ``run_checkpoint`` (``<default_root_dir>/checkpoints/last.ckpt``)."""
    for path in sorted(CONFIGS.glob("*/*.yaml")):
        cfg = read_yaml(path)
        root = (cfg.get("trainer") or {}).get("default_root_dir")
        if root and cfg.get("data") and f"{root}/checkpoints/last.ckpt" == run_checkpoint:
            return str(path.relative_to(CONFIGS))
    raise AssertionError(f"no config in configs/ trains {run_checkpoint} (fix the path in the sampling YAML)")


def tiny_checkpoints(tmp_path_factory) -> Callable[[str], Path]:
    """``run checkpoint path named in a YAML -> tiny checkpoint``, each made once by a tiny fit of its training
    config (a module-scoped fixture returns this)."""
    made: dict[str, Path] = {}

    def get(run_checkpoint: str) -> Path:
        if run_checkpoint not in made:
            config = training_config_for(run_checkpoint)
            root = tmp_path_factory.mktemp(config.replace("/", "_").removesuffix(".yaml"))
            cli("fit", "--config", CONFIGS / config, "--trainer.default_root_dir", root, "--trainer.max_steps", "2",
                "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1", *TINY_FITS[config])
            made[run_checkpoint] = root / "checkpoints" / "last.ckpt"
        return made[run_checkpoint]

    return get


# ---- composed configs: a dataset's sampling config plus a guidance file, parsed by the CLI itself ------------------
#: each dataset's sampling config (the skeleton a configs/guidance/ file goes on top of)
SAMPLING = {"digits": "digits/sampling.yaml", "fractal": "fractal/sampling.yaml", "toy": "toy/sampling.yaml"}


def guidance_datasets(name: str) -> list[str]:
    """The datasets a ``configs/guidance/<name>.yaml`` says it applies to (its ``# Datasets: ...`` header line)."""
    import re

    found = re.search(r"^# Datasets: ([a-z, ]+?) \(", (CONFIGS / "guidance" / f"{name}.yaml").read_text(), re.M)
    assert found, f"configs/guidance/{name}.yaml has no '# Datasets: ...' line"
    return [d.strip() for d in found.group(1).split(",")]


def guidance_combinations(has: str | None = None) -> list[tuple[str, str]]:
    """``(dataset sampling config, guidance config)`` for every combination the guidance files document; ``has``:
    only the guidance files whose sweep has that key (``terms`` or ``cfg_rule``)."""
    out = []
    for path in sorted((CONFIGS / "guidance").glob("*.yaml")):
        sweep = read_yaml(path)["model"]["init_args"]["sweep"]
        if has is None or sweep.get(has):
            out += [(SAMPLING[d], f"guidance/{path.name}") for d in guidance_datasets(path.stem)]
    return out


@functools.cache
def config_parser():
    """The CLI's own parser (every subcommand), built once; it parses and resolves ``${...}`` without running."""
    import lightning as L

    from lightning_guidance.launch.lightning_cli import GuidanceCLI

    class ParseOnly(GuidanceCLI):
        def before_instantiate_classes(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            pass

        def _run_subcommand(self, subcommand: str) -> None:
            pass

    return ParseOnly(L.LightningModule, None, subclass_mode_model=True, subclass_mode_data=True,
                     args=["predict", "--config", str(CONFIGS / SAMPLING["digits"])]).parser


def composed(*configs: str, command: str = "predict", args: tuple = ()) -> dict:
    """The whole config the CLI makes of ``<command> --config configs/a --config configs/b ... args`` (defaults
    filled in, ``${...}`` resolved), as a plain dict."""
    parser = config_parser()
    argv = [command, *(x for c in configs for x in ("--config", str(CONFIGS / c))), *map(str, args)]
    return yaml.safe_load(parser.dump(parser.parse_args(argv)))[command]


def rewrite_sampling_config(config: str | tuple[str, ...], out: Path, checkpoint_for: Callable[[str], Path],
                            values: list[float] | None = None, **init_overrides) -> Path:
    """The sampling config ``configs/<config>`` (or several combined, e.g. ``(SAMPLING["digits"],
    "guidance/cg.yaml")``) as the CLI composes it, with every checkpoint path (the diffusion model, each guidance
    term's TrainedClassifier, a CFG rule's guide) replaced by ``checkpoint_for(path)``, the sweep's ``values`` if
    given, ``init_overrides`` and its outputs in ``out``; dumped next to ``out`` for ``--config``."""
    cfg = composed(*((config,) if isinstance(config, str) else config))
    init = cfg["model"]["init_args"]
    init["checkpoint"] = str(checkpoint_for(init["checkpoint"]))
    sweep = init["sweep"]
    for term in sweep.get("terms") or []:
        spec = term["init_args"].get("classifier") or {}
        if spec.get("class_path") == TRAINED_CLASSIFIER:
            spec["init_args"]["checkpoint"] = str(checkpoint_for(spec["init_args"]["checkpoint"]))
    rule_args = (sweep.get("cfg_rule") or {}).get("init_args") or {}
    if "guide_checkpoint" in rule_args:
        rule_args["guide_checkpoint"] = str(checkpoint_for(rule_args["guide_checkpoint"]))
    if values is not None:  # the sweep's values, the rest of the sweep as configured
        sweep["values"] = values
    init.update(output_dir=str(out), **init_overrides)
    cfg["trainer"]["default_root_dir"] = str(out)
    path = out.parent / f"{out.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


# ---- metrics on real process groups ----------------------------------------------------------------------------
def run_on_gloo_ranks(body: Callable[[int], None], world_size: int, folder: Path, timeout: float = 150) -> None:
    """``body(rank)`` in ``world_size`` forked processes joined in one gloo process group (rendezvous through a file
    in ``folder``); fails with every rank's traceback if one fails. Fork: the children inherit the imported modules
    (spawn re-imports torch and torchmetrics in each, ~10 s on a loaded 2-core machine); each sets one intra-op
    thread first, as DataLoader workers do."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    def worker(rank: int) -> None:
        try:
            torch.set_num_threads(1)
            dist.init_process_group("gloo", init_method=f"file://{folder / 'init'}", rank=rank, world_size=world_size)
            body(rank)
            dist.barrier()
            dist.destroy_process_group()
        except Exception:
            (folder / f"error_rank{rank}.txt").write_text(traceback.format_exc())
            raise

    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=worker, args=(rank,)) for rank in range(world_size)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=timeout)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    errors = "".join(f.read_text() for f in sorted(folder.glob("error_rank*.txt")))
    assert all(p.exitcode == 0 for p in procs), f"exit codes {[p.exitcode for p in procs]}\n{errors}"
