"""What modules and callbacks read from the trainer and send through it: when an every-N-epochs evaluation runs,
the folder of a run's figures, and logging a PNG to the loggers that take images."""

from __future__ import annotations

from pathlib import Path

from ..io.figures import read_png


def evaluation_due(trainer, every_n_epochs: int) -> bool:
    """Whether an every-N-epochs evaluation runs in this validation: never in the sanity check, every N-th epoch
    during fit, always in a stand-alone ``validate``."""
    if trainer.sanity_checking:
        return False
    return trainer.state.fn != "fit" or (trainer.current_epoch + 1) % every_n_epochs == 0


def figure_dir(trainer, dirname: str) -> Path:
    """``<log_dir or default_root_dir>/<dirname>``. Collective under DDP (``trainer.log_dir`` broadcasts rank 0's
    folder): every rank must call it, before any ``if trainer.is_global_zero``."""
    return Path(trainer.log_dir or trainer.default_root_dir) / dirname


def log_image(trainer, tag: str, path: str | Path) -> None:
    """Send a PNG to every logger of ``trainer`` that takes images (TensorBoard's ``add_image``, or ``log_image``)."""
    if trainer is None:
        return
    for logger in trainer.loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key=tag, images=[str(path)], step=trainer.global_step)
        elif hasattr(getattr(logger, "experiment", None), "add_image"):
            logger.experiment.add_image(tag, read_png(path), global_step=trainer.global_step, dataformats="HWC")
