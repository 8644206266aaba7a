"""Panels of toy points for the report's figures: a 2D scatter framed on its points, 1D sampling paths (class 0 blue,
class 1 red throughout), and grids of estimates against a scale with their bands and an exact reference."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .figures import axis_labels, legend_outside, plot_with_band, pyplot

CLASS_COLORS = ("tab:blue", "tab:red")


def scatter_framed(ax, points, labels, title: str, quantile: float = 0.005) -> int:
    """Both classes' 2D points, the panel framed on them: limits at the ``quantile`` and ``1 - quantile`` quantiles of
    each coordinate (padded), the number of points beyond them in the title (returned)."""
    pts, y = np.asarray(points, dtype=np.float64), np.asarray(labels)
    lo, hi = np.quantile(pts, quantile, axis=0), np.quantile(pts, 1 - quantile, axis=0)
    pad = 0.08 * np.maximum(hi - lo, 1e-3)
    lo, hi = lo - pad, hi + pad
    outside = int((~((pts >= lo) & (pts <= hi)).all(axis=1)).sum())
    for cls, color in enumerate(CLASS_COLORS):
        ax.scatter(pts[y == cls, 0], pts[y == cls, 1], s=1.5, color=color, alpha=0.6, label=f"class {cls}")
    ax.set_xlim(lo[0], hi[0]), ax.set_ylim(lo[1], hi[1])
    axis_labels(ax, "x1", "x2", title + (f"\n({outside} point{'s' * (outside != 1)} outside the frame)" if outside else ""))
    return outside


def paths_1d(ax, trajectory, labels, per_class: int, boundary: float = 0.0) -> None:
    """The first ``per_class`` sampling paths of each class (``trajectory`` (steps + 1, N)) against the step, and the
    decision boundary dotted."""
    traj, y = np.asarray(trajectory), np.asarray(labels)
    for cls, color in enumerate(CLASS_COLORS):
        for i in np.flatnonzero(y == cls)[:per_class]:
            ax.plot(np.arange(len(traj)), traj[:, i], color=color, lw=0.6, alpha=0.7)
    ax.axhline(boundary, color="k", lw=0.6, ls=":")


def frame(ax, values, scale: str = "linear", linthresh: float = 1.0) -> None:
    """The y axis on ``scale`` (``linear``, ``log``, or ``symlog`` linear within ``linthresh`` of 0), its limits the
    data's (``values``: curves and band ends) padded by 5 % of the range as drawn, so the data fill the panel; the
    scale named in the axis label."""
    vals = np.asarray([float(v) for v in np.ravel(values) if v is not None], dtype=float)
    vals = vals[np.isfinite(vals) & ((vals > 0) if scale == "log" else True)]
    if scale != "linear":
        ax.set_yscale(scale, **({"linthresh": linthresh} if scale == "symlog" else {}))
        ax.set_ylabel(f"{ax.get_ylabel()} ({scale})", fontsize=8)
    if not len(vals):
        return
    forward = ax.yaxis.get_transform()
    lo, hi = forward.transform([vals.min(), vals.max()])
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    ax.set_ylim(*forward.inverted().transform([lo - pad, hi + pad]))


def paths_grid(rows, per_class: int, x_label: str = "sampler step"):
    """Panels of 1D sampling paths (:func:`paths_1d`), one row per ``(y label, panels)``, each panel ``(title,
    trajectory (steps + 1, N), labels)``: titles on the first row, the x label on the last."""
    fig, axes = pyplot().subplots(len(rows), len(rows[0][1]), figsize=(2.2 * len(rows[0][1]), 2.0 * len(rows)),
                                  squeeze=False)
    for r, (y_label, panels) in enumerate(rows):
        for c, (title, traj, labels) in enumerate(panels):
            paths_1d(axes[r][c], traj, labels, per_class)
            axis_labels(axes[r][c], x_label if r == len(rows) - 1 else "", y_label if c == 0 else "",
                        title if r == 0 else "")
    return fig


class BandPanel(NamedTuple):
    """One panel of :func:`band_grid`: curves ``(label, x, estimates)``, a dotted ``reference`` line ``(value, label)``
    or None, and the y axis's scale (:func:`frame`)."""

    title: str
    y_label: str
    curves: list
    reference: tuple[float, str] | None = None
    scale: str = "linear"


def band_grid(columns: list[list[BandPanel]], x_label: str, width: float = 3.6, height: float = 2.7):
    """Columns of panels (:class:`BandPanel`), each curve drawn with its 95 % band (curve ``i`` of a panel in style
    ``i``), the y axis framed on the bands and the reference, the title on the first row only; one legend below."""
    rows, cols = len(columns[0]), len(columns)
    fig, axes = pyplot().subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for c, panels in enumerate(columns):
        for r, panel in enumerate(panels):
            ax, values = axes[r][c], []
            for i, (label, x, est) in enumerate(panel.curves):
                plot_with_band(ax, x, est, label, i)
                values += [v for e in est for v in (e["lo"], e["hi"])]
            if panel.reference is not None:
                ax.axhline(panel.reference[0], color="k", ls=":", lw=1, label=panel.reference[1])
                values.append(panel.reference[0])
            axis_labels(ax, x_label, panel.y_label, panel.title if r == 0 else "")
            frame(ax, values, panel.scale)
    legend_outside(fig)
    return fig
