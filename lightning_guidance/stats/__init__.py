"""Statistics on plain arrays (numpy, no torch, no Lightning): bootstrap intervals over samples and over training
seeds, paired comparisons, and the verdict rule (agree / disagree / inconclusive) with its effect size and the
sample count a claim needs. Deterministic given a seed."""

from .bootstrap import (
    HIERARCHICAL_METHODS,
    METHODS,
    Interval,
    bootstrap,
    hierarchical_bootstrap,
    mean_statistic,
    normal_interval,
    paired,
    paired_bootstrap,
    resample,
    unpaired_bootstrap,
)
from .estimate import ESTIMATE_METHODS, Estimate, difference, text
from .verdict import VERDICTS, effect_size, samples_needed, verdict

__all__ = [
    "ESTIMATE_METHODS",
    "Estimate",
    "difference",
    "HIERARCHICAL_METHODS",
    "METHODS",
    "VERDICTS",
    "Interval",
    "bootstrap",
    "effect_size",
    "hierarchical_bootstrap",
    "mean_statistic",
    "normal_interval",
    "paired",
    "paired_bootstrap",
    "resample",
    "samples_needed",
    "text",
    "unpaired_bootstrap",
    "verdict",
]
