"""Figures as PNG files, written atomically: sample pictures (an image grid with one row per class, or a scatter /
histogram of toy points), calibration over diffusion time with reliability diagrams, metrics against the sweep
value, and guidance diagnostics along the sampling trajectory.

The report's figures share a few rules, kept here: every curve has its own colour, marker and dash (:func:`style`),
its 95 % band (:func:`plot_with_band`), labelled axes (:func:`axis_labels`), a legend off the data
(:func:`legend_outside`), and axes that outliers do not flatten (:func:`fit_axis`: clipped with a note, or symlog).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from .atomic import atomic_write


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


MARKERS = ("o", "s", "^", "D", "v", "P", "X")
DASHES = ("-", "--", "-.", ":")


def style(i: int) -> dict:
    """Curve ``i``'s ``color``, ``marker`` and ``linestyle``: the 20 colours of tab20 (dark shades first), and markers
    and dashes cycling at other periods, so no two of the first 20 curves share a colour and neighbours differ in
    all three."""
    from matplotlib import colormaps

    k = i % 20
    return {"color": colormaps["tab20"].colors[2 * k % 20 + k // 10], "marker": MARKERS[i % len(MARKERS)],
            "linestyle": DASHES[i % len(DASHES)]}


def _triples(values) -> tuple[list[float], list[float], list[float]]:
    """(values, lows, highs) of estimates: objects with ``value/lo/hi``, their JSON dicts, or ``(v, lo, hi)``."""
    out = []
    for e in values:
        if isinstance(e, Mapping):
            out.append((e["value"], e["lo"], e["hi"]))
        elif hasattr(e, "lo"):
            out.append((e.value, e.lo, e.hi))
        else:
            v, lo, hi = e
            out.append((v, lo, hi))
    return tuple(list(map(float, col)) for col in zip(*out)) if out else ([], [], [])


def plot_with_band(ax, x: Sequence[float], estimates, label: str, i: int, band: bool = True, **kwargs):
    """Curve ``i`` (:func:`style`) through the estimates' values with their 95 % interval as a shaded band (or error
    bars for fewer than 3 points, or with ``band=False``); returns the line."""
    v, lo, hi = _triples(estimates)
    st = {**style(i), "markersize": 4, "linewidth": 1.2, **kwargs}
    if band and len(x) >= 3:
        (line,) = ax.plot(x, v, label=label, **st)
        ax.fill_between(x, lo, hi, color=st["color"], alpha=0.18, linewidth=0)
        return line
    err = [[a - b for a, b in zip(v, lo)], [b - a for a, b in zip(v, hi)]]
    return ax.errorbar(x, v, yerr=err, label=label, capsize=2, **st)


def axis_labels(ax, x: str, y: str, title: str = "") -> None:
    ax.set_xlabel(x, fontsize=8)
    ax.set_ylabel(y, fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)


def legend_outside(target, fontsize: int = 7, **kwargs):
    """The legend to the right of an axes, or below a whole figure (its axes' labels, each once): never on data."""
    if hasattr(target, "get_axes") and not hasattr(target, "plot"):  # a Figure
        handles: dict = {}
        for ax in target.get_axes():
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        return target.legend(list(handles.values()), list(handles), loc="outside lower center", fontsize=fontsize,
                             ncols=min(4, max(1, len(handles))), frameon=False, **kwargs)
    return target.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=fontsize, frameon=False,
                         borderaxespad=0.0, **kwargs)


def fit_axis(ax, values, core: tuple[float, float] = (0.1, 0.9), reach: float = 3.0, axis: str = "y") -> str:
    """Frame an axis on its data. ``symlog`` when the finite values span more than two decades (linear within the
    decade of the 5 % magnitude, drawn two decades wide so the tick labels around 0 stay apart); else, with 10 values
    or more, points farther than ``reach`` times the spread of the ``core`` quantiles beyond them are left off the
    axis and counted in its label ("k points off the axis"). Returns ``linear``, ``clipped`` or ``symlog``. Pass the curves' values and band ends only."""
    import numpy as np

    vals = np.asarray([float(v) for v in np.ravel(values) if v is not None], dtype=float)
    vals = vals[np.isfinite(vals)]
    set_scale, set_lim = (ax.set_yscale, ax.set_ylim) if axis == "y" else (ax.set_xscale, ax.set_xlim)
    label = ax.get_ylabel() if axis == "y" else ax.get_xlabel()
    set_label = ax.set_ylabel if axis == "y" else ax.set_xlabel
    mag = np.abs(vals[vals != 0])
    if len(mag) >= 3 and mag.max() / np.quantile(mag, 0.05) > 100 and np.ptp(vals) > 100 * np.quantile(mag, 0.05):
        set_scale("symlog", linthresh=float(10 ** np.floor(np.log10(np.quantile(mag, 0.05)))), linscale=2.0)
        set_label(f"{label} (symlog)", fontsize=8)
        return "symlog"
    if len(vals) < 10:
        return "linear"
    lo, hi = np.quantile(vals, core)
    span = max(hi - lo, 1e-12 * max(abs(hi), 1.0))
    outside = int(np.sum((vals < lo - reach * span) | (vals > hi + reach * span)))
    if not outside:
        return "linear"
    inside = vals[(vals >= lo - reach * span) & (vals <= hi + reach * span)]
    pad = 0.08 * max(np.ptp(inside), span)
    set_lim(inside.min() - pad, inside.max() + pad)
    set_label(f"{label} ({outside} point{'s' * (outside != 1)} off the axis)", fontsize=8)
    return "clipped"


def _save(fig, path: str | Path) -> Path:
    plt = pyplot()
    try:
        fig.tight_layout()
        return atomic_write(path, lambda p: fig.savefig(p, format="png"), suffix=".png")
    finally:
        plt.close(fig)


def save_figure(fig, path: str | Path) -> Path:
    """A report's figure as PNG (110 dpi): constrained layout, so that the titles and labels of neighbouring panels
    do not overlap."""
    fig.set_layout_engine("constrained")
    try:
        return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"), suffix=".png")
    finally:
        pyplot().close(fig)


def read_png(path: str | Path) -> Tensor:
    """A PNG as an RGB float tensor (H, W, 3) in [0, 1]."""
    return torch.from_numpy(pyplot().imread(str(path))[..., :3].copy())


def _rows_by_class(samples: Tensor, labels: Tensor, per_class: int) -> tuple[Tensor, int, list[int]]:
    """The samples of each class in a row (padded with grey), the row width, and the class of each row."""
    rows, classes = [], labels.unique(sorted=True).tolist()
    for c in classes:
        rows.append(samples[labels == c][:per_class])
    width = max(len(r) for r in rows)
    padded = [torch.cat([r, torch.full((width - len(r), *r.shape[1:]), -1.0)]) if len(r) < width else r for r in rows]
    return torch.cat(padded), width, classes


def _save_image_rows(images: Tensor, width: int, row_labels: list[str], path: str | Path, title: str) -> Path:
    """A grid of images in [-1, 1], ``width`` a row, with a title and a label left of each row."""
    from torchvision.utils import make_grid

    pad = 2
    grid = make_grid((images + 1) / 2, nrow=width, padding=pad, pad_value=0.5).clamp(0, 1)
    plt = pyplot()
    cell = images.shape[-1] + pad
    rows = len(row_labels)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * width, 0.6 + 0.45 * rows), dpi=100)
    ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray" if grid.shape[0] == 1 else None, interpolation="nearest")
    ax.set_yticks([pad + cell * i + images.shape[-2] / 2 for i in range(rows)], row_labels, fontsize=7)
    ax.set_xticks([])
    ax.set_title(title, fontsize=8)
    return _save(fig, path)


def save_sample_picture(samples: Tensor, labels: Tensor, path: str | Path, title: str = "", per_class: int = 10) -> Path:
    """PNG of samples: images in [-1, 1] as a grid with one row per class (labelled) under ``title`` (say the
    scale in it); 1D/2D points as a plot."""
    samples, labels = samples.detach().float().cpu(), labels.detach().cpu()
    if samples.ndim == 4:
        grid, width, classes = _rows_by_class(samples, labels, per_class)
        return _save_image_rows(grid, width, [f"class {c}" for c in classes], path, title)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    for c in labels.unique(sorted=True).tolist():
        pts = samples[labels == c]
        if samples.shape[1] == 1:
            ax.hist(pts[:, 0].numpy(), bins=80, alpha=0.6, label=f"class {c}", density=True)
        else:
            ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=2, alpha=0.5, label=f"class {c}")
    ax.legend(loc="best", fontsize=7)
    ax.set_title(title, fontsize=8)
    return _save(fig, path)


def save_move_picture(before: Tensor, after: Tensor, labels: Tensor, path: str | Path, title: str = "",
                      per_class: int = 10) -> Path:
    """What a post-processor moved: images as pairs of rows per class (before above after); 2D points as arrows
    from before to after, coloured by the length of the move; 1D points as the move against the position."""
    before, after, labels = before.detach().float().cpu(), after.detach().float().cpu(), labels.detach().cpu()
    if before.ndim == 4:
        rows_b, width, classes = _rows_by_class(before, labels, per_class)
        rows_a, _, _ = _rows_by_class(after, labels, per_class)
        shape = before.shape[1:]
        pairs = torch.stack([rows_b.reshape(-1, width, *shape), rows_a.reshape(-1, width, *shape)], dim=1)
        names = [f"class {c} {when}" for c in classes for when in ("before", "after")]
        return _save_image_rows(pairs.reshape(-1, *shape), width, names, path, title)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    move = after - before
    if before.shape[1] == 2:
        ax.scatter(before[:, 0].numpy(), before[:, 1].numpy(), s=2, c="0.7", label="before")
        arrows = ax.quiver(before[:, 0].numpy(), before[:, 1].numpy(), move[:, 0].numpy(), move[:, 1].numpy(),
                           move.norm(dim=1).numpy(), angles="xy", scale_units="xy", scale=1, width=0.002)
        fig.colorbar(arrows, ax=ax, label="move (L2)")
    else:
        ax.scatter(before.flatten().numpy(), move.flatten().numpy(), s=2)
        ax.set_xlabel("before")
        ax.set_ylabel("move")
    ax.set_title(title, fontsize=8)
    return _save(fig, path)


def _draw_reliability(ax, count: Tensor, confidence_sum: Tensor, correct_sum: Tensor, label: str) -> None:
    seen = count > 0
    confidence = (confidence_sum[seen] / count[seen]).cpu().numpy()
    accuracy = (correct_sum[seen] / count[seen]).cpu().numpy()
    ax.plot(confidence, accuracy, marker="o", markersize=3, label=label)


def save_calibration_over_time(bucket_names: Sequence[str], bucket_centers: Sequence[float], metrics: Mapping[str, float],
                               bins: tuple[Tensor, Tensor, Tensor], path: str | Path, title: str = "") -> Path:
    """Right: the reliability diagram of each time bucket. Left: ECE and Smooth ECE per bucket against t (the
    integral ECE is their mean), or, for a single (clean) bucket, how many samples fall in each confidence bin.
    ``metrics`` holds ``ece_<bucket>`` / ``smooth_ece_<bucket>`` (or ``ece`` / ``smooth_ece``)."""
    plt = pyplot()
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


def save_metrics_vs_value(values: Sequence[float], rows: Sequence[Mapping[str, float]], path: str | Path, axis: str,
                          title: str = "") -> Path:
    """One panel per metric, the metric against the swept value (``axis``: its name, ``Sweep.axis``)."""
    plt = pyplot()
    keys = [k for k in rows[0] if all(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(2.6 * len(keys), 2.6), dpi=100, squeeze=False)
    for ax, key in zip(axes[0], keys):
        ax.plot(list(values), [r[key] for r in rows], marker="o")
        ax.set(xlabel=axis, title=key)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def save_guidance_diagnostics(traces: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path,
                              title: str = "") -> Path:
    """Per guidance term (``name -> {'t', 'gradient_rms', 'vanishing_fraction', 'confidence'}``): the RMS of its
    gradient, the fraction of samples whose gradient vanished and the classifier's confidence in the requested class,
    each against the diffusion time of the step (time runs right to left during sampling)."""
    plt = pyplot()
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


def band_panels(panels: Sequence[tuple[str, Sequence[tuple[str, Sequence[float], Sequence]]]], xlabel: str,
                ylabel: str, zero_line: bool = True, width: float = 4.2, height: float = 3.0):
    """A figure with one panel per ``(title, curves)``, each curve ``(label, x, estimates)`` drawn with its 95 % band
    (:func:`plot_with_band`; error bars, nudged apart along x, where a curve has fewer than three points), a dotted
    line at 0 (``zero_line``: the curves are differences), axes framed on the bands (:func:`fit_axis`) and one legend
    below the panels; a label keeps one style in every panel, and no two labels share one."""
    fig, axes = pyplot().subplots(1, len(panels), figsize=(width * len(panels), height), squeeze=False)
    styles: dict[str, int] = {}
    for ax, (title, curves) in zip(axes[0], panels):
        xs = sorted({float(x) for _, x, _ in curves for x in x})
        nudge = 0.012 * (xs[-1] - xs[0] if len(xs) > 1 else 1.0)
        seen = []
        for k, (label, x, est) in enumerate(curves):
            shift = (k - (len(curves) - 1) / 2) * nudge if len(x) < 3 else 0.0
            plot_with_band(ax, [float(v) + shift for v in x], est, label, styles.setdefault(label, len(styles)))
            seen += [v for lo_hi in _triples(est)[1:] for v in lo_hi]
        if zero_line:
            ax.axhline(0.0, color="0.5", lw=0.8, ls=":")
        axis_labels(ax, xlabel, ylabel, title)
        fit_axis(ax, seen)
    legend_outside(fig, fontsize=6)
    return fig


def lines_figure(curves: Mapping[str, Sequence[float]], xlabel: str, ylabel: str, title: str = "", log: bool = False):
    """Curves of values over a shared progress axis ``(k + 0.5) / len`` (curves of different lengths side by side),
    each in its own style, legend off the data."""
    fig, ax = pyplot().subplots(figsize=(5.2, 3.0))
    for i, (label, ys) in enumerate(curves.items()):
        st = style(i)
        ax.plot([(k + 0.5) / len(ys) for k in range(len(ys))], ys, label=label, color=st["color"], lw=1,
                linestyle=st["linestyle"], marker=st["marker"], markersize=2 if len(ys) > 60 else 3)
    if log:
        ax.set_yscale("log")
    axis_labels(ax, xlabel, ylabel, title)
    legend_outside(ax, fontsize=6)
    return fig


def interval_scatter(groups: Mapping[str, Sequence[tuple]], xlabel: str, ylabel: str, title: str = ""):
    """One marker style per group of points ``(x estimate, y estimate, note)`` (estimates as for
    :func:`plot_with_band`), each with its 95 % error bars on both axes and its note (if any) beside it."""
    fig, ax = pyplot().subplots(figsize=(5.2, 3.6))
    for i, (label, points) in enumerate(groups.items()):
        (x, xlo, xhi), (y, ylo, yhi) = (_triples([p[k] for p in points]) for k in (0, 1))
        st = style(i)
        ax.errorbar(x, y, xerr=[[a - b for a, b in zip(x, xlo)], [b - a for a, b in zip(x, xhi)]],
                    yerr=[[a - b for a, b in zip(y, ylo)], [b - a for a, b in zip(y, yhi)]], fmt=st["marker"],
                    color=st["color"], ms=5, capsize=2, lw=0.8, label=label)
        for xi, yi, (*_, note) in zip(x, y, points):
            if note:
                ax.annotate(note, (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
    axis_labels(ax, xlabel, ylabel, title)
    legend_outside(ax, fontsize=7)
    return fig
