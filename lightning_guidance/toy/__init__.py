"""Toy distributions with exact scores and class posteriors at every noise level (the suite's test oracles)."""

from .exact_models import ExactMixtureClassifier, ExactMixtureDenoiser
from .fractal2d import fractal_2d
from .gaussian_mixture import GaussianMixture
from .mixture1d import exact_conditional_scores, two_class_mixture_1d

__all__ = ["GaussianMixture", "exact_conditional_scores", "two_class_mixture_1d", "fractal_2d", "ExactMixtureDenoiser",
           "ExactMixtureClassifier"]
