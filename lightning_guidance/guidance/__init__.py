"""Guidance terms: small objects that, given the sampler state at a step, return a score correction."""

from ..diffusion.plug import GuidanceState, GuidanceTerm, total_guidance

__all__ = ["GuidanceState", "GuidanceTerm", "total_guidance"]
from .cfg_plus_classifier import CFGPlusClassifierGuidance
from .classifier import ClassifierGuidance
from .divergence import DivergenceGuidance
from .entropy import EntropyAdaptiveGuidance
from .log_likelihood import ClassifierTerm, log_likelihood
from .offtheshelf import OffTheShelfGuidance
from .schedules import ConstantSchedule, LinearSchedule, TimeIntervalSchedule
from .tilted import TiltedGuidance

__all__ += ["CFGPlusClassifierGuidance", "ClassifierGuidance", "ClassifierTerm", "ConstantSchedule",
            "DivergenceGuidance", "EntropyAdaptiveGuidance", "LinearSchedule", "OffTheShelfGuidance",
            "TiltedGuidance", "TimeIntervalSchedule", "log_likelihood"]
