"""From a measured effect's interval to a verdict on a paper's claim, its effect size, and the sample count that
would decide it.

The *effect* is oriented by the caller (e.g. ``fd(method) - fd(baseline)``, or the paired difference of two
methods), and ``expected_sign`` is the sign the paper's claim predicts for it (+1: the effect is positive, -1:
negative). The verdict reads only whether the interval excludes 0 and on which side:

- ``agree``: the interval lies entirely on the predicted side of 0;
- ``disagree``: it lies entirely on the other side;
- ``inconclusive``: it contains 0 (the data cannot tell the sign at this n).
"""

from __future__ import annotations

import math

from .bootstrap import Interval, normal_quantile

VERDICTS = ("agree", "disagree", "inconclusive")


def verdict(interval: Interval, expected_sign: int) -> str:
    """``agree`` / ``disagree`` / ``inconclusive`` for an effect whose predicted sign is ``expected_sign`` (±1)."""
    if expected_sign not in (1, -1):
        raise ValueError(f"expected_sign must be +1 or -1 (the sign the claim predicts), got {expected_sign!r}")
    if interval.low > 0:
        side = 1
    elif interval.high < 0:
        side = -1
    else:
        return "inconclusive"
    return "agree" if side == expected_sign else "disagree"


def effect_size(interval: Interval, num_samples: int) -> float:
    """The standardised effect ``d = estimate / (SE sqrt(n))``: the effect in units of the per-sample noise.

    For a mean of ``n`` paired per-sample differences, ``SE = sd / sqrt(n)`` and ``d`` is Cohen's ``d_z``
    (Cohen 1988, §2.3.5); for a set-level metric (a Fréchet distance of ``n`` samples) ``SE sqrt(n)`` is the
    per-sample noise the bootstrap measured, so ``d`` does not shrink or grow with ``n``. 0 when the effect is
    exactly 0; ``inf`` with a nonzero effect and no noise.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if interval.estimate == 0:
        return 0.0
    noise = interval.standard_error * math.sqrt(num_samples)
    return interval.estimate / noise if noise > 0 else math.copysign(math.inf, interval.estimate)


def samples_needed(interval: Interval, num_samples: int, power: float = 0.8) -> float:
    """How many samples would make the interval exclude 0 with probability ``power``, from the measured noise.

    The standard error of an effect estimated from ``n`` samples scales as ``SE(n') = SE sqrt(n / n')``. The
    ``level`` interval excludes 0 with probability ``power`` when ``|effect| >= (z_{(1+level)/2} + z_power) SE(n')``,
    so ``n' = n ((z_{(1+level)/2} + z_power) SE / |effect|)^2`` (rounded up; ``inf`` for a zero effect). The measured
    effect is taken as the true one, so this is a guide, not a guarantee.
    """
    if not 0 < power < 1:
        raise ValueError(f"power must lie in (0, 1), got {power}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if interval.estimate == 0:
        return math.inf
    z = normal_quantile((1 + interval.level) / 2) + normal_quantile(power)
    return float(math.ceil(num_samples * (z * interval.standard_error / abs(interval.estimate)) ** 2))
