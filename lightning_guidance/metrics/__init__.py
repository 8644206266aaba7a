"""torchmetrics Metrics the suite needs beyond upstream: Fréchet distance in a judge's feature space (and Inception
FID from local weights), generative precision/recall, judge-based scores, Smooth ECE and ECE over diffusion time."""

from .calibration_metrics import ECEOverTime, SmoothECE
from .classifier_metrics import ClassifierScore, conditional_accuracy
from .frechet import FrechetDistance, InceptionFID, frechet_distance, images_to_uint8_rgb, inception_fid
from .precision_recall import GenerativePrecisionRecall, knn_radii, manifold_coverage

__all__ = [
    "ClassifierScore",
    "ECEOverTime",
    "FrechetDistance",
    "GenerativePrecisionRecall",
    "InceptionFID",
    "SmoothECE",
    "conditional_accuracy",
    "frechet_distance",
    "images_to_uint8_rgb",
    "inception_fid",
    "knn_radii",
    "manifold_coverage",
]
