"""Command line: ``lightning-guidance fit|validate|test|predict --config ...`` (LightningCLI) and ``... study``."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import lightning as L
import yaml
from jsonargparse import ArgumentError, Namespace, set_parsing_settings
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .callbacks import stop_on_signal
from .callbacks.csv_history import RowsBeforeCheckpoint
from .callbacks.final_checkpoint import FinalCheckpoint, keep_earlier_checkpoints
from .callbacks.progress import StepProgressBar
from .callbacks.stop_on_signal import StopOnSignal
from .io.atomic import atomic_path, remove_stale_temps
from .modules.resume_checks import check_resume_config, check_resume_weights, resolve_ckpt_path
from .launch.arguments import config_files
from .launch.resources import check_trainer_resources
from .launch.slurm import SubmitError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes ``x.ckpt`` via a temp file and a rename."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


def _first_process() -> bool:
    """Global rank 0, as the launcher's environment says before Lightning sets the ranks up (a DDP child, an srun
    task or a node started by hand has one of these set to another number)."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"))


class GuidanceCLI(LightningCLI):
    """LightningCLI where one knob, ``--trainer.default_root_dir``, places a run's files.

    Unless a config says otherwise: metrics go to ``<root>/logs/metrics.csv`` (a CSV logger that keeps the history
    across resumes and re-runs), checkpoints to ``<root>/checkpoints`` (so ``--ckpt_path last`` finds them), and
    checkpoint files are written atomically. Every fit ends with a checkpoint of its final step; SIGTERM/SIGINT stop
    at a safe point; a resume from a checkpoint of another class or architecture, or one that the command line
    contradicts, is refused; temp files of killed writers under the run's folders are removed.
    """

    def init_parser(self, **kwargs):
        kwargs.setdefault("exit_on_error", False)  # the error first, in one line (not after the usage text)
        # ${...} in a config is resolved after every --config is merged, relative to the subcommand: a guidance
        # config reads the paths of the dataset config it is combined with (configs/README.md)
        kwargs.setdefault("parser_mode", "omegaconf+")
        set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--paths", type=dict[str, str], default={},
                            help="a dataset config's named paths (runs, classifier, ...), read by the guidance "
                                 "configs combined with it as ${paths.<name>} (configs/README.md)")

    def _parse_ckpt_path(self) -> None:
        """Check a resume checkpoint against the run's config instead of loading its hyper-parameters over it."""
        self._resume_from = None
        self._fresh_fit = False
        sub = self.config.get("subcommand")
        if not sub or sub != "fit":
            return super()._parse_ckpt_path()
        cfg = self.config[sub]
        root = cfg.trainer.default_root_dir or os.path.join("runs", "default")
        path = resolve_ckpt_path(cfg.get("ckpt_path"), root)
        if path is None:
            # nothing to resume (Lightning resumes a SLURM hpc_ckpt_*.ckpt by itself when ckpt_path is None)
            self._fresh_fit = cfg.get("ckpt_path") in (None, "last") and not any(Path(root).glob("hpc_ckpt_*.ckpt"))
            return None
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path} (--ckpt_path)")
        self._resume_from = (path, check_resume_config(path, cfg.model))
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")  # resuming
        return None

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        trainer = cfg.trainer
        if trainer.default_root_dir is None:
            trainer.default_root_dir = os.path.join("runs", "default")
        # one clear line now, instead of a failure deep inside Lightning or a rendezvous that waits forever
        check_trainer_resources(trainer.accelerator, trainer.devices, trainer.num_nodes)
        if trainer.logger in (None, True):
            trainer.logger = Namespace(class_path="lightning_guidance.callbacks.csv_history.HistoryCSVLogger",
                                       init_args=Namespace(save_dir=trainer.default_root_dir, name="logs", version=""))
        folders = {trainer.default_root_dir}
        model_args = getattr(cfg.get("model"), "init_args", None)
        if model_args is not None and model_args.get("output_dir"):
            folders.add(model_args.output_dir)
        for folder in folders:
            remove_stale_temps(folder)

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # the user chose none of their own
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))
        bar = trainer.progress_bar_callback
        if type(bar) is RichProgressBar:  # Lightning's default: show steps, not "Epoch 24/-2"
            trainer.callbacks[trainer.callbacks.index(bar)] = StepProgressBar()
        # the step's metrics row before any checkpoint callback saves that step (Lightning sorted those last)
        first = next((i for i, cb in enumerate(trainer.callbacks) if isinstance(cb, Checkpoint)), len(trainer.callbacks))
        trainer.callbacks.insert(first, RowsBeforeCheckpoint())
        trainer.callbacks += [FinalCheckpoint(), StopOnSignal()]
        return trainer

    def before_fit(self) -> None:
        if getattr(self, "_resume_from", None) is not None:
            path, ckpt = self._resume_from
            check_resume_weights(path, ckpt, self.model)
        if getattr(self, "_fresh_fit", False) and _first_process():
            keep_earlier_checkpoints(self.trainer)  # so checkpoints/last.ckpt will be this run's


class _NoVendorTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless cloud" not in record.getMessage()


def quiet_lightning() -> None:
    """No vendor tips, and no warning that is false for this suite."""
    # Lightning 2.6 on torch 2.14 warns about its own use of a deprecated pytree API on every run
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # logging is by global step, so a short epoch still logs every log_every_n_steps steps
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval")
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoVendorTips) for f in logger.filters):
            logger.addFilter(_NoVendorTips())


def run_lightning_cli(args: list[str] | None = None, run: bool = True) -> GuidanceCLI:
    quiet_lightning()
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


def check_config_files(argv: list[str]) -> None:
    """Each ``--config`` file must exist and be a YAML mapping: else one line naming it (not a parser traceback)."""
    for value in config_files(argv):
        if value.lstrip().startswith(("{", "[")):  # a config given inline
            continue
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        text = path.read_text(errors="replace")
        if not text.strip():
            raise ValueError(f"config file {path} is empty: give a YAML mapping (see configs/)")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ValueError(f"config file {path} is not valid YAML{where}: "
                             f"{getattr(err, 'problem', None) or type(err).__name__}") from err
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} is not a YAML mapping of settings (it holds a "
                             f"{type(data).__name__}): see configs/ for the form")


def main(args: list[str] | None = None) -> None:
    """Run a subcommand; errors surface as the exception that explains them (not a parser wrapper).

    SIGTERM/SIGINT stop the run at a safe point; it then exits with ``128 + signal``."""
    argv = list(sys.argv[1:] if args is None else args)
    check_config_files(argv)
    check_old_names(argv)
    if argv and argv[0] == "study":
        from .study import main as study_main

        code = study_main(argv[1:], run_in_process=main)
        if code:
            raise SystemExit(code)
        return
    previous = stop_on_signal.install()
    try:
        run_lightning_cli(args)  # None: LightningCLI reads sys.argv itself
    except SIGTERMException as stop:
        raise SystemExit(_signal_exit(stop)) from None
    except ArgumentError as err:
        raise UsageError(f"{err}\n(run with --help for the accepted options)") from None
    except Exception as err:  # noqa: BLE001 - re-raised unchanged, just unwrapped
        raise _root_cause(err) from None
    finally:
        stop_on_signal.restore(previous)
    if stop_on_signal.received() is not None:  # the signal came as the run was ending: it ended whole
        raise SystemExit(_signal_exit(None))


class UsageError(ValueError):
    """A command line the parser refused."""


def _signal_exit(stop: SIGTERMException | None) -> int:
    import signal

    signum = stop_on_signal.received() or signal.SIGTERM
    sys.stderr.write(f"stopped by {signal.Signals(signum).name}; every file written is whole. Re-run the same "
                     "command to continue (fit: add --ckpt_path last; predict skips finished shards)\n")
    return 128 + int(signum)


def console_main() -> None:
    """The shell entry point: a one-line message instead of a traceback for errors of use."""
    try:
        main()
    except UsageError as err:
        sys.exit(f"error: {err}")
    except (FileNotFoundError, ValueError, TypeError, FloatingPointError, ImportError, SubmitError) as err:
        if os.environ.get("LG_TRACEBACK"):
            raise
        sys.exit(f"error: {type(err).__name__}: {err}\n(set LG_TRACEBACK=1 for the traceback)")


if __name__ == "__main__":
    console_main()
