"""Calibration math on plain tensors: binned ECE, integral ECE over diffusion time, differentiable Smooth ECE."""

from .ece import (
    bucket_name,
    calibration_bin_statistics,
    ece_from_bin_statistics,
    expected_calibration_error,
    integral_ece,
    time_buckets,
    top_label_confidence,
)
from .smooth_ece import smooth_ece, smooth_ece_bandwidth, smooth_ece_fixed_bandwidth

__all__ = [
    "bucket_name",
    "calibration_bin_statistics",
    "ece_from_bin_statistics",
    "expected_calibration_error",
    "integral_ece",
    "smooth_ece",
    "smooth_ece_bandwidth",
    "smooth_ece_fixed_bandwidth",
    "time_buckets",
    "top_label_confidence",
]
