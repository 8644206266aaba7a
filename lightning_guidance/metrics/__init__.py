"""torchmetrics Metrics the suite needs beyond upstream: Fréchet and kernel distances in a judge's feature space (and
Inception FID from local weights), generative precision/recall, judge-based scores, Smooth ECE and ECE over diffusion
time; per-sample judge outputs and every sample-quality figure recomputed from them on any set of sample ids."""

from .calibration_metrics import ECEOverTime, SmoothECE
from .classifier_metrics import ClassifierScore, conditional_accuracy
from .frechet import FrechetDistance, InceptionFID, frechet_distance, images_to_uint8_rgb, inception_fid
from .kernel_distance import kd_name, kernel_distance
from .products import SampleProducts, quality_from_products, real_floor
from .precision_recall import GenerativePrecisionRecall, knn_radii, manifold_coverage

__all__ = [
    "ClassifierScore",
    "ECEOverTime",
    "FrechetDistance",
    "GenerativePrecisionRecall",
    "InceptionFID",
    "SampleProducts",
    "SmoothECE",
    "conditional_accuracy",
    "frechet_distance",
    "images_to_uint8_rgb",
    "inception_fid",
    "kd_name",
    "kernel_distance",
    "knn_radii",
    "manifold_coverage",
    "quality_from_products",
    "real_floor",
]
