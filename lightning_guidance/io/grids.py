"""Pictures of samples: an image grid (one row per class) or, for toy data, a scatter / histogram."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .atomic import atomic_write


def _rows_by_class(samples: Tensor, labels: Tensor, per_class: int) -> Tensor:
    rows = []
    for c in labels.unique(sorted=True).tolist():
        rows.append(samples[labels == c][:per_class])
    width = max(len(r) for r in rows)
    padded = [torch.cat([r, torch.full((width - len(r), *r.shape[1:]), -1.0)]) if len(r) < width else r for r in rows]
    return torch.cat(padded), width


def save_sample_picture(samples: Tensor, labels: Tensor, path: str | Path, title: str = "", per_class: int = 10) -> Path:
    """PNG of samples: images in [-1, 1] as a grid with one row per class; 1D/2D points as a plot."""
    samples, labels = samples.detach().float().cpu(), labels.detach().cpu()
    if samples.ndim == 4:
        from torchvision.utils import save_image

        grid, width = _rows_by_class(samples, labels, per_class)
        big = torch.nn.functional.interpolate((grid + 1) / 2, scale_factor=max(1, 64 // grid.shape[-1]), mode="nearest")
        return atomic_write(path, lambda p: save_image(big, p, nrow=width, padding=4, pad_value=0.5, format="png"),
                            suffix=".png")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    for c in labels.unique(sorted=True).tolist():
        pts = samples[labels == c]
        if samples.shape[1] == 1:
            ax.hist(pts[:, 0].numpy(), bins=80, alpha=0.6, label=f"class {c}", density=True)
        else:
            ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=2, alpha=0.5, label=f"class {c}")
    ax.legend(loc="best", fontsize=7)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda p: fig.savefig(p, format="png"), suffix=".png")
    finally:
        plt.close(fig)
