"""The suite's LightningCLI: ``fit|validate|test|predict --config ...`` with one knob, ``default_root_dir``, that places
a run's files (:class:`GuidanceCLI`). Imported by :mod:`lightning_guidance.cli` only when a subcommand runs."""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from jsonargparse import ArgumentError, Namespace, set_parsing_settings
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint, ModelSummary, RichModelSummary, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from ..callbacks.csv_history import RowsBeforeCheckpoint
from ..callbacks.epoch_end_resume import EpochEndResume
from ..callbacks.final_checkpoint import FinalCheckpoint, keep_earlier_checkpoints, one_last_checkpoint
from ..callbacks.progress import NothingLoggedNote, OneLineSummary, StepProgressBar
from ..callbacks.stop_on_signal import StopOnSignal
from ..io.atomic import atomic_write_bytes, remove_stale_temps
from ..modules.resume_checks import check_resume_config, check_resume_weights, resolve_ckpt_path
from .arguments import config_files
from .config_errors import UsageError, explain_parser_error
from .help import import_suite_classes, short_class_lists
from .resources import check_trainer_resources


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes ``x.ckpt`` via a temp file beside it and a rename. Lightning's own save
    goes through fsspec, which writes the whole file in the system temp folder first (a kill left it there)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options)  # its error for storage_options
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getbuffer())


def _first_process() -> bool:
    """Global rank 0, as the launcher's environment says before Lightning sets the ranks up (a DDP child, an srun
    task or a node started by hand has one of these set to another number)."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"))


def check_nothing_to_resume(root: str) -> None:
    """``--ckpt_path last`` found no ``last*.ckpt``: refuse when other checkpoints are there (resuming none of them
    would silently start from step 0), else say in one line that the fit starts from step 0."""
    folder = Path(root, "checkpoints")
    if any(Path(root).glob("hpc_ckpt_*.ckpt")):
        return  # Lightning resumes a SLURM requeue's checkpoint itself
    others = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if others:
        raise ValueError(f"--ckpt_path last: {folder} has no last.ckpt but {len(others)} other checkpoint(s), the "
                         f"newest {others[-1].name}: resume from it with --ckpt_path {others[-1]}, or leave out "
                         "--ckpt_path to start from step 0 (they are then kept as checkpoints.1/)")
    rank_zero_info(f"--ckpt_path last: no checkpoint in {folder} yet, so this fit starts from step 0")


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
        kwargs.setdefault("allow_abbrev", False)  # --trainer.max_step is refused, not read as --trainer.max_steps
        # ${...} in a config is resolved after every --config is merged, relative to the subcommand: a guidance
        # config reads the paths of the dataset config it is combined with (docs/architecture.md, the data path)
        kwargs.setdefault("parser_mode", "omegaconf+")
        set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--paths", type=dict[str, str], default={},
                            help="a dataset config's named paths (runs, classifier, ...), read by the guidance "
                                 "configs combined with it as ${paths.<name>}")

    def parse_arguments(self, parser, args) -> None:
        """A refused config or option is one line naming the key and the nearest valid name."""
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            given = sys.argv[1:] if args is None else list(args)
            sub = next((a for a in given if a in getattr(self, "_subcommand_parsers", {})), None)
            options = (self._subcommand_parsers[sub] if sub else parser)._option_string_actions
            files = config_files(given)
            raise UsageError(explain_parser_error(str(err), options, files), detail=str(err)) from None

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
        if path is None and cfg.get("ckpt_path") == "last":
            check_nothing_to_resume(root)
            cfg.ckpt_path = None  # a fresh fit, said in one line
        if path is None:
            # nothing to resume (Lightning resumes a SLURM hpc_ckpt_*.ckpt by itself when ckpt_path is None)
            self._fresh_fit = cfg.get("ckpt_path") in (None, "last") and not any(Path(root).glob("hpc_ckpt_*.ckpt"))
            return None
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path} (--ckpt_path)")
        self._resume_from = (path, check_resume_config(path, cfg.model))
        cfg.ckpt_path = str(path)  # the file checked is the file Lightning loads
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")  # resuming
        return None

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        trainer = cfg.trainer
        model_args = getattr(cfg.get("model"), "init_args", None)
        if trainer.default_root_dir is None:  # a folder of samples being graded holds its grading, else runs/default
            samples = model_args.get("samples") if model_args is not None else None
            trainer.default_root_dir = samples if isinstance(samples, str) else os.path.join("runs", "default")
        # one clear line now, instead of a failure deep inside Lightning or a rendezvous that waits forever
        check_trainer_resources(trainer.accelerator, trainer.devices, trainer.num_nodes)
        logger_class = str(getattr(trainer.logger, "class_path", trainer.logger))
        if logger_class.endswith("TensorBoardLogger") and not any(map(importlib.util.find_spec, ("tensorboard",
                                                                                              "tensorboardX"))):
            raise ImportError("TensorBoardLogger needs TensorBoard, an optional extra: pip install -e '.[tensorboard]'")
        if trainer.logger in (None, True):
            trainer.logger = Namespace(class_path="lightning_guidance.callbacks.csv_history.HistoryCSVLogger",
                                       init_args=Namespace(save_dir=trainer.default_root_dir, name="logs", version=""))
        folders = {trainer.default_root_dir}
        if model_args is not None and model_args.get("output_dir"):
            folders.add(model_args.output_dir)
        for folder in folders:
            remove_stale_temps(folder)
        # test grades what predict wrote in the same folder: its config beside predict's, not over it
        self.save_config_kwargs["config_filename"] = \
            "config.yaml" if self.subcommand in ("fit", "predict", None) else f"{self.subcommand}_config.yaml"

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # the user chose none of their own
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        folder = os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = folder
        one_last_checkpoint(trainer, folder)  # checkpoints/last.ckpt whatever the config says, and no -v1 names
        bar = trainer.progress_bar_callback
        if type(bar) is RichProgressBar:  # Lightning's default: show steps, not "Epoch 24/-2", and the run's time
            trainer.callbacks[trainer.callbacks.index(bar)] = StepProgressBar()
        for i, cb in enumerate(trainer.callbacks):  # Lightning's default table has a FLOPs column of zeros
            if type(cb) in (ModelSummary, RichModelSummary):
                trainer.callbacks[i] = OneLineSummary(max_depth=cb._max_depth)
        # the step's metrics row before any checkpoint callback saves that step (Lightning sorted those last)
        first = next((i for i, cb in enumerate(trainer.callbacks) if isinstance(cb, Checkpoint)), len(trainer.callbacks))
        trainer.callbacks.insert(first, RowsBeforeCheckpoint())
        trainer.callbacks += [FinalCheckpoint(), StopOnSignal(), EpochEndResume(), NothingLoggedNote()]
        return trainer

    def before_fit(self) -> None:
        if getattr(self, "_resume_from", None) is not None:
            path, ckpt = self._resume_from
            check_resume_weights(path, ckpt, self.model)
        if getattr(self, "_fresh_fit", False) and _first_process():
            keep_earlier_checkpoints(self.trainer)  # so checkpoints/last.ckpt will be this run's


#: Lightning's console lines that are noise here: a vendor's tip, the TPU line of a machine without TPUs, and the
#: EMA callback's note on every resume that it restores the raw weights (what a resume does)
QUIET_LINES = ("Tip: For seamless cloud", "TPU available: False", "Found current_model_state in the checkpoint")


class _QuietLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(line in message for line in QUIET_LINES)


_format_warning = warnings.formatwarning


def _warning_of_ours(message, category, filename, lineno, line=None) -> str:
    """A warning raised inside an installed library names the library, not a line of its code (the cause is this
    run's config, not that file); the suite's own warnings keep their file and line."""
    if "site-packages" in str(filename) or "dist-packages" in str(filename):
        library = str(filename).replace("\\", "/").split("-packages/")[-1].split("/")[0]
        return f"warning ({library}): {message}\n"
    return _format_warning(message, category, filename, lineno, line)


def quiet_lightning() -> None:
    """No vendor tips, no line that is false for this suite, and warnings that do not point into a library."""
    warnings.formatwarning = _warning_of_ours
    # Lightning 2.6 on torch 2.14 warns about its own use of a deprecated pytree API on every run
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # the suite always passes the command line to LightningCLI as a list (its own parsing comes first)
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    # on a machine with SLURM's tools a run started by hand is meant to run here (slurm/train.sbatch uses srun)
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")
    # logging is by global step, so a short epoch still logs every log_every_n_steps steps
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval")
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietLines) for f in logger.filters):
            logger.addFilter(_QuietLines())


def asks_for_help(args: list[str]) -> bool:
    return any(a in ("-h", "--help") or a.split("=")[0].endswith(".help") for a in args)


def run_lightning_cli(args: list[str] | None = None, run: bool = True) -> GuidanceCLI:
    quiet_lightning()
    if asks_for_help(sys.argv[1:] if args is None else args):
        import_suite_classes()  # so that help lists the suite's classes and --model.help SamplingModule resolves
        short_class_lists()  # ... and not every nn.Module
    return GuidanceCLI(
        L.LightningModule,
        None,  # any LightningDataModule, and optional: SamplingModule brings its own predict loader
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,  # a config without seed_everything: seed 0 (not a warning that no seed was found)
        args=args,
        run=run,
    )
