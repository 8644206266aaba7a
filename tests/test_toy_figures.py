"""The toy panels of the report: a scatter framed on its points (an outlier does not shrink the data to a dot; it
is counted in the title), 1D paths drawn per class."""

import numpy as np
import pytest

from lightning_guidance.io.figures import pyplot
from lightning_guidance.io.toy_figures import paths_1d, scatter_framed


def test_a_scatter_is_framed_on_its_points_and_counts_the_outlier():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.uniform(-1.0, 1.0, size=(999, 2)), [[500.0, -500.0]]])
    labels = np.arange(1000) % 2
    fig, ax = pyplot().subplots()
    assert scatter_framed(ax, points, labels, "set") == 1
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert -1.3 < x0 < -1 and 1 < x1 < 1.3 and -1.3 < y0 < -1 and 1 < y1 < 1.3  # the bulk, not the outlier
    assert ax.get_title() == "set\n(1 point outside the frame)" and ax.get_xlabel() == "x1"
    pyplot().close(fig)


def test_paths_are_drawn_per_class_with_the_boundary():
    traj = np.cumsum(np.ones((5, 6)), axis=0) * (2 * (np.arange(6) % 2) - 1)  # class 1 up, class 0 down
    fig, ax = pyplot().subplots()
    paths_1d(ax, traj, np.arange(6) % 2, per_class=2)
    lines = ax.get_lines()
    assert len(lines) == 5 and {tuple(line.get_ydata()[-1:]) for line in lines[:4]} == {(-5.0,), (5.0,)}
    pyplot().close(fig)


def test_a_symlog_axis_is_filled_by_its_data():
    """Values from -1e5 to 2: the panel spans them with 5 % of the drawn range to spare, not decades of empty axis."""
    from lightning_guidance.io.toy_figures import frame

    fig, ax = pyplot().subplots()
    values = [-1e5, -30.0, -2.0, 0.5, 2.0]
    ax.plot(range(5), values)
    frame(ax, values, "symlog")
    forward = ax.yaxis.get_transform()
    (lo, hi), (dlo, dhi) = forward.transform(ax.get_ylim()), forward.transform([min(values), max(values)])
    assert ax.get_yscale() == "symlog" and (dlo - lo, hi - dhi) == pytest.approx((0.05 * (dhi - dlo),) * 2)
    pyplot().close(fig)
