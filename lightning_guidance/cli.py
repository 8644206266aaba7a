"""Command line: ``lightning-guidance fit|validate|test|predict --config ...`` (LightningCLI) and ``... study``."""

from __future__ import annotations

import os
import sys
import warnings

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .io.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes ``x.ckpt`` via a temp file and a rename."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


class GuidanceCLI(LightningCLI):
    """LightningCLI where one knob, ``--trainer.default_root_dir``, places a run's files.

    Unless a config says otherwise: metrics go to ``<root>/logs/metrics.csv`` (CSVLogger, fixed version, so a
    re-run or a resume writes to the same place), checkpoints to ``<root>/checkpoints`` (so ``--ckpt_path last``
    finds them), and checkpoint files are written atomically.
    """

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        trainer = cfg.trainer
        if trainer.default_root_dir is None:
            trainer.default_root_dir = os.path.join("runs", "default")
        if trainer.logger in (None, True):
            trainer.logger = Namespace(class_path="lightning.pytorch.loggers.CSVLogger",
                                       init_args=Namespace(save_dir=trainer.default_root_dir, name="logs", version=""))

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # the user chose none of their own
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        for cb in trainer.checkpoint_callbacks:
            if cb.dirpath is None:
                cb.dirpath = os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))
        return trainer


def run_lightning_cli(args: list[str] | None = None, run: bool = True) -> GuidanceCLI:
    # Lightning 2.6 on torch 2.14 warns about its own use of a deprecated pytree API on every run
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    return GuidanceCLI(
        L.LightningModule,
        None,  # any LightningDataModule, and optional: SamplingModule brings its own predict loader
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def _root_cause(err: BaseException) -> BaseException:
    """jsonargparse wraps an error raised while building a class in its own ValueError; find the original."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        inner = err.__cause__ or err.__context__
        if inner is None or not isinstance(err, ValueError) or "validate against any of the Union" not in str(err) \
                and "Problem with given class_path" not in str(err):
            return err
        err = inner
    return err


#: config keys (in any ``init_args``) that were renamed: old key -> the key to write instead
RENAMED_KEYS = {
    "scales": "sweep.values", "scale_target": "sweep.target", "cfg_scales": "sweep.values",
    "cfg_scale": "sweep.cfg_scale (SamplingModule, GuidanceDiagnostics)",
    "guidance": "sweep.terms (SamplingModule, SampleQualityEvaluation, GuidanceDiagnostics)",
    "clip_denoised": "clip_x0", "x0_clip": "clip_x0 (true clamps x0_hat to [-1, 1])",
    "num_steps": "sampler_kwargs: {num_steps: ...}",
}
#: class paths that moved: old -> new
MOVED_CLASSES = {
    "lightning_guidance.io.checkpoints.TrainedClassifier": "lightning_guidance.nets.TrainedClassifier",
    "lightning_guidance.evaluation.judge.Judge": "lightning_guidance.metrics.judge.Judge",
    "lightning_guidance.evaluation.heldout_split.HeldOutSplit": "lightning_guidance.data.heldout_split.HeldOutSplit",
    "lightning_guidance.modules.noisy_classifier.NoisyClassifier": "lightning_guidance.modules.classifier.Classifier",
}


def _old_names(node, file: str, where: str = "") -> None:
    """Raise at the first renamed key or moved class path in a parsed config (``where``: the keys leading there)."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            _old_names(item, file, f"{where}[{i}]")
    if not isinstance(node, dict):
        return
    path = node.get("class_path")
    if isinstance(path, str) and path in MOVED_CLASSES:
        raise ValueError(f"{file}: {where}.class_path {path} has moved: write {MOVED_CLASSES[path]}")
    for key, value in node.items():
        here = f"{where}.{key}" if where else str(key)
        if key == "init_args" and isinstance(value, dict):
            old = next((k for k in value if k in RENAMED_KEYS), None)
            if old is not None:
                raise ValueError(f"{file}: {here}.{old} was renamed: write {RENAMED_KEYS[old]}")
        if key != "sampler_kwargs":
            _old_names(value, file, here)


def check_old_names(argv: list[str]) -> None:
    """A config file or argument that uses a renamed key or a moved class gets a one-line error naming the new one."""
    import yaml

    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv) and os.path.isfile(argv[i + 1]):
            with open(argv[i + 1]) as f:
                _old_names(yaml.safe_load(f), argv[i + 1])
        elif arg.startswith("--") and ".init_args." in arg:
            old = arg.split("=")[0].rpartition(".init_args.")[2].split(".")[0]
            if old in RENAMED_KEYS:
                raise ValueError(f"{arg.split('=')[0]} was renamed: write {RENAMED_KEYS[old]}")
        elif arg in MOVED_CLASSES:
            raise ValueError(f"class_path {arg} has moved: write {MOVED_CLASSES[arg]}")


def main(args: list[str] | None = None) -> None:
    """Run a subcommand; errors surface as the exception that explains them (not a parser wrapper)."""
    argv = list(sys.argv[1:] if args is None else args)
    check_old_names(argv)
    if argv and argv[0] == "study":
        from .study import main as study_main

        code = study_main(argv[1:], run_in_process=main)
        if code:
            raise SystemExit(code)
        return
    try:
        run_lightning_cli(args)  # None: LightningCLI reads sys.argv itself
    except Exception as err:  # noqa: BLE001 - re-raised unchanged, just unwrapped
        raise _root_cause(err) from None


def console_main() -> None:
    """The shell entry point: a one-line message instead of a traceback for errors of use."""
    try:
        main()
    except (FileNotFoundError, ValueError, TypeError, FloatingPointError, ImportError) as err:
        if os.environ.get("LG_TRACEBACK"):
            raise
        sys.exit(f"error: {type(err).__name__}: {err}\n(set LG_TRACEBACK=1 for the traceback)")


if __name__ == "__main__":
    console_main()
