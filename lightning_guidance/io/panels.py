"""Panels of the study's figures, on :mod:`.figures`' rules (distinct styles, 95 % bands or bars, labelled axes, the
legend off the data): digit grids with a row per class and a title naming method and scale, several panels of
estimates against one x, and empirical CDFs with their bands."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

from torch import Tensor

from .figures import _rows_by_class, axis_labels, legend_outside, plot_with_band, pyplot, style


def draw_digit_grid(ax, samples: Tensor, labels: Tensor, title: str = "", per_class: int = 8) -> None:
    """Images in [-1, 1] on one axes: a row per class (its label on the y axis), the first ``per_class`` samples of
    each class in id order across, grey padding; ``title`` above (say the method and the scale)."""
    from torchvision.utils import make_grid

    samples, labels = samples.detach().float().cpu(), labels.detach().cpu()
    grid, width, classes = _rows_by_class(samples, labels, per_class)
    pad, (h, w) = 1, samples.shape[-2:]
    picture = make_grid((grid.clamp(-1, 1) + 1) / 2, nrow=width, padding=pad, pad_value=0.5)
    ax.imshow(picture.permute(1, 2, 0).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([pad + r * (h + pad) + h / 2 - 0.5 for r in range(len(classes))], [str(c) for c in classes],
                  fontsize=6)
    ax.set_xticks([pad + c * (w + pad) + w / 2 - 0.5 for c in range(width)], [str(c + 1) for c in range(width)],
                  fontsize=5)
    ax.set_ylabel("class", fontsize=7)
    ax.set_xlabel("sample (id order)", fontsize=7)
    # each line of the title wrapped to the panel's width (about 34 characters at this size)
    ax.set_title("\n".join(textwrap.fill(line, 34) for line in title.split("\n")), fontsize=8)


def digit_grids_figure(rows: Sequence[Sequence[tuple[str, Tensor, Tensor] | None]], per_class: int = 8):
    """Rows of :func:`draw_digit_grid` panels, one per ``(title, samples, labels)`` (``None``: an empty place);
    returns the figure."""
    ncols = max(len(r) for r in rows)
    fig, axes = pyplot().subplots(len(rows), ncols, figsize=(2.3 * ncols, 3.1 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(ncols):
            if c < len(row) and row[c] is not None:
                draw_digit_grid(axes[r][c], row[c][1], row[c][2], row[c][0], per_class)
            else:
                axes[r][c].set_visible(False)
    return fig


def estimate_panels(panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence]]], x_label: str,
                    ncols: int = 3, reference: Mapping[str, tuple[float, str]] | None = None, zero: bool = False,
                    index: Mapping[str, int] | None = None):
    """One panel per key of ``panels`` (its y label), in it a curve per ``label: (xs, estimates)`` with 95 % error
    bars, the curves shifted apart along x by 1 % of its range so that their bars stay apart; ``reference[key] =
    (y, label)``: a dotted line; ``zero``: a line at 0; ``index[label]``: the curve's :func:`.style` (the same thing
    in the same style across figures; default: its order); the legend below the figure. Returns the figure."""
    import numpy as np

    rows = -(-len(panels) // ncols)
    fig, axes = pyplot().subplots(rows, ncols, figsize=(3.4 * ncols, 2.8 * rows), squeeze=False)
    for ax, (key, curves) in zip(axes.flat, panels.items()):
        xs_all = [x for xs, _ in curves.values() for x in xs]
        step = 0.01 * (max(xs_all) - min(xs_all) or 1)
        for i, (label, (xs, estimates)) in enumerate(curves.items()):
            shift = step * (i - (len(curves) - 1) / 2)
            plot_with_band(ax, list(np.asarray(xs, dtype=float) + shift), estimates, label,
                           (index or {}).get(label, i), band=False)
        if reference and key in reference:
            ax.axhline(reference[key][0], color="0.4", linestyle=":", linewidth=1, label=reference[key][1])
        if zero:
            ax.axhline(0, color="k", linewidth=0.8)
        axis_labels(ax, x_label, key)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    legend_outside(fig)
    return fig


def ecdf_figure(curves: Sequence[tuple[str, object, int]], x_label: str, y_label: str = "share of samples at or below"):
    """One axis of empirical CDFs with their 95 % bands, ``(label, values, style index)`` each (:func:`plot_ecdf`)."""
    fig, ax = pyplot().subplots(figsize=(7, 3.6))
    for label, values, i in curves:
        plot_ecdf(ax, values, label, i)
    axis_labels(ax, x_label, y_label)
    legend_outside(fig)
    return fig


def plot_ecdf(ax, values, label: str, i: int, level: float = 0.95):
    """The empirical CDF of ``values`` (curve ``i``, :func:`style`) with its ``level`` band (Dvoretzky-Kiefer-Wolfowitz:
    ``+-sqrt(log(2 / (1 - level)) / (2 n))``, Massart's constant); returns the line."""
    import numpy as np

    x = np.sort(np.asarray(values, dtype=float))
    y = np.arange(1, len(x) + 1) / len(x)
    eps = np.sqrt(np.log(2 / (1 - level)) / (2 * len(x)))
    st = style(i)
    (line,) = ax.step(x, y, where="post", label=label, color=st["color"], linestyle=st["linestyle"], linewidth=1.2)
    ax.fill_between(x, np.clip(y - eps, 0, 1), np.clip(y + eps, 0, 1), step="post", color=st["color"], alpha=0.15,
                    linewidth=0)
    return line
