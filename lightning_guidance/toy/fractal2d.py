"""The 2D fractal toy distribution of Karras et al. 2024 ("Guiding a diffusion model with a bad version of
itself", public toy example), as specified in docs/math.md §6.

Each class is a binary tree of branches (depth 0..6, 127 branches); each branch is a line segment covered by 8
elongated Gaussians. All random numbers come from one ``numpy.random.RandomState(2)`` consumed depth-first in a
fixed order, class 0 first: the component values therefore match the reference exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .gaussian_mixture import GaussianMixture

FRACTAL_SEED = 2
FRACTAL_ORIGIN = (0.0030, 0.0325)
FRACTAL_SCALE = (1.3136, 1.3844)
FRACTAL_MAX_DEPTH = 7  # branches exist at depths 0..6
FRACTAL_ROOT_ANGLES = (math.pi / 4, 5 * math.pi / 4)  # class 0 grows up-right, class 1 down-left
COMPONENTS_PER_BRANCH = 8


def fractal_2d(classes: tuple[int, ...] = (0, 1)) -> GaussianMixture:
    """The fractal mixture restricted to ``classes`` (subset of {0, 1}); weights renormalised over them.

    Class ids keep their meaning whatever subset is chosen (``classes=(1,)`` gives a mixture whose only
    class is 1, with ``num_classes = 2``).
    """
    classes = tuple(sorted({int(c) for c in classes}))
    if not classes or not set(classes) <= {0, 1}:
        raise ValueError(f"classes must be a non-empty subset of (0, 1), got {classes}")
    rnd = np.random.RandomState(FRACTAL_SEED)
    origin, scale = np.array(FRACTAL_ORIGIN), np.array(FRACTAL_SCALE)
    comps: list[tuple[int, float, np.ndarray, np.ndarray]] = []  # (class, weight, mean, cov)

    def grow(cls: int, depth: int, pos: np.ndarray, angle: float) -> None:
        if depth >= FRACTAL_MAX_DEPTH:
            return
        direction = np.array([math.cos(angle), math.sin(angle)])
        dist = 0.292 * 0.8 ** depth * (0.2 * rnd.randn() + 1)
        thick = 0.2 * 0.8 ** depth / dist  # cross-section relative to the length
        size = scale * dist * 0.06
        along = np.outer(direction, direction)
        cov = (along + (np.eye(2) - along) * thick ** 2) * np.outer(size, size)
        for u in np.linspace(0.07, 0.93, COMPONENTS_PER_BRANCH):
            comps.append((cls, dist * 0.5 ** depth, (pos + direction * dist * u) * scale, cov))
        for sign in (1, -1):
            # the child's angle is drawn before it grows, so the sign=-1 draw follows the whole sign=+1 subtree
            child_angle = angle + sign * 0.7 ** depth * (0.2 * rnd.randn() + 1)
            grow(cls, depth + 1, pos + direction * dist, child_angle)

    # both classes are always grown so that the random stream (and class 1's shape) does not depend on `classes`
    for cls, angle in enumerate(FRACTAL_ROOT_ANGLES):
        grow(cls, 0, origin, angle)

    kept = [c for c in comps if c[0] in classes]
    return GaussianMixture(
        means=torch.tensor(np.stack([c[2] for c in kept])),
        covs=torch.tensor(np.stack([c[3] for c in kept])),
        weights=torch.tensor([c[1] for c in kept], dtype=torch.float64),
        component_labels=torch.tensor([c[0] for c in kept]),
        num_classes=2,
    )
