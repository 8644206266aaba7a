"""The evaluation figures as PNG files (written atomically): reliability diagrams, calibration over diffusion time,
metrics against the guidance scale and guidance diagnostics along the trajectory; and logging them to the
trainer's loggers that take images (TensorBoard, or any logger with ``log_image``, e.g. W&B)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..io.atomic import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    plt = _pyplot()
    try:
        fig.tight_layout()
        return atomic_write(path, lambda p: fig.savefig(p, format="png"), suffix=".png")
    finally:
        plt.close(fig)


def _draw_reliability(ax, count: Tensor, confidence_sum: Tensor, correct_sum: Tensor, label: str) -> None:
    seen = count > 0
    confidence = (confidence_sum[seen] / count[seen]).cpu().numpy()
    accuracy = (correct_sum[seen] / count[seen]).cpu().numpy()
    ax.plot(confidence, accuracy, marker="o", markersize=3, label=label)


def save_reliability_diagram(curves: Mapping[str, tuple[Tensor, Tensor, Tensor]], path: str | Path,
                             title: str = "") -> Path:
    """Accuracy against mean confidence per equal-width bin, one curve per ``label -> (count, conf_sum, correct_sum)``
    (the bin statistics of :mod:`lightning_guidance.calibration.ece`); the diagonal is perfect calibration."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1)
    for label, (count, confidence_sum, correct_sum) in curves.items():
        _draw_reliability(ax, count, confidence_sum, correct_sum, label)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (bin mean)", ylabel="accuracy", title=title)
    ax.legend(loc="upper left", fontsize=6)
    return _save(fig, path)


def save_calibration_over_time(bucket_names: Sequence[str], bucket_centers: Sequence[float], metrics: Mapping[str, float],
                               bins: tuple[Tensor, Tensor, Tensor], path: str | Path, title: str = "") -> Path:
    """Right: the reliability diagram of each time bucket. Left: ECE and Smooth ECE per bucket against t (the
    integral ECE is their mean), or, for a single (clean) bucket, how many samples fall in each confidence bin.
    ``metrics`` holds ``ece_<bucket>`` / ``smooth_ece_<bucket>`` (or ``ece`` / ``smooth_ece``)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.6), dpi=100)
    count, confidence_sum, correct_sum = bins
    if len(bucket_names) == 1:
        n_bins = count.shape[1] - 1  # the last bin holds confidences of exactly 1
        left.bar((torch.arange(n_bins + 1) / n_bins).numpy(), count[0].cpu().numpy(), width=1 / n_bins, align="edge")
        left.set(xlabel="confidence", ylabel="samples",
                 title=f"ECE {metrics['ece']:.4f}, Smooth ECE {metrics['smooth_ece']:.4f}")
    else:
        for key, label in (("ece", "ECE (10 bins)"), ("smooth_ece", "Smooth ECE")):
            left.plot(list(bucket_centers), [metrics[f"{key}_{n}"] for n in bucket_names], marker="o", label=label)
        left.set(xlabel="diffusion time t", ylabel="calibration error", title=f"integral ECE {metrics['ece']:.4f}")
        left.legend(fontsize=7)
    right.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1)
    for k, name in enumerate(bucket_names):
        _draw_reliability(right, count[k], confidence_sum[k], correct_sum[k], name)
    right.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (bin mean)", ylabel="accuracy", title="reliability")
    right.legend(loc="upper left", fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def save_metrics_vs_scale(scales: Sequence[float], rows: Sequence[Mapping[str, float]], path: str | Path,
                          scale_name: str = "scale", title: str = "") -> Path:
    """One panel per metric, the metric against the guidance scale."""
    plt = _pyplot()
    keys = [k for k in rows[0] if all(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(2.6 * len(keys), 2.6), dpi=100, squeeze=False)
    for ax, key in zip(axes[0], keys):
        ax.plot(list(scales), [r[key] for r in rows], marker="o")
        ax.set(xlabel=scale_name, title=key)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def save_guidance_diagnostics(traces: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path,
                              title: str = "") -> Path:
    """Per guidance term (``name -> {'t', 'gradient_rms', 'vanishing_fraction', 'confidence'}``): the RMS of its
    gradient, the fraction of samples whose gradient vanished and the classifier's confidence in the requested class,
    each against the diffusion time of the step (time runs right to left during sampling)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(10, 3), dpi=100)
    for name, trace in traces.items():
        t = list(trace["t"])
        axes[0].semilogy(t, [max(v, 1e-12) for v in trace["gradient_rms"]], label=name)
        axes[1].plot(t, list(trace["vanishing_fraction"]), label=name)
        axes[2].plot(t, list(trace["confidence"]), label=name)
    for ax, label in zip(axes, ("gradient RMS (before scale)", "fraction with vanishing gradient",
                                "classifier p(y | input)")):
        ax.set(xlabel="diffusion time t", title=label)
        ax.invert_xaxis()
    axes[1].set_ylim(-0.02, 1.02)
    axes[2].set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def log_image(trainer, tag: str, path: str | Path) -> None:
    """Send a PNG to every logger of ``trainer`` that takes images (TensorBoard's ``add_image``, or ``log_image``)."""
    if trainer is None:
        return
    for logger in trainer.loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key=tag, images=[str(path)], step=trainer.global_step)
        elif hasattr(getattr(logger, "experiment", None), "add_image"):
            image = torch.from_numpy(_pyplot().imread(str(path))[..., :3].copy())
            logger.experiment.add_image(tag, image, global_step=trainer.global_step, dataformats="HWC")


def figure_dir(trainer, dirname: str) -> Path:
    """``<log_dir or default_root_dir>/<dirname>``. Collective under DDP (``trainer.log_dir`` broadcasts rank 0's
    folder): every rank must call it, before any ``if trainer.is_global_zero``."""
    return Path(trainer.log_dir or trainer.default_root_dir) / dirname


def evaluation_due(trainer, every_n_epochs: int) -> bool:
    """Whether an every-N-epochs evaluation callback runs in this validation: never in the sanity check, every
    N-th epoch during fit, always in a stand-alone ``validate``."""
    if trainer.sanity_checking:
        return False
    return trainer.state.fn != "fit" or (trainer.current_epoch + 1) % every_n_epochs == 0
