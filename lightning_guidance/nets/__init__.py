"""Networks (plain ``nn.Module``s, no Lightning).

Denoisers: ``forward(x, t, y) -> same shape as x`` (the eps / x0 / v prediction), class id ``num_classes``
= the CFG null class. Classifiers: ``forward(x, t=None) -> logits (B, num_classes)``, ``t=None`` = clean.
``t`` is continuous time in [0, 1], a float tensor (B,).
"""

from .activation_swap import SwapReport, swap_relu_for_softplus
from .classifier_head import classifier_head
from .conv_classifier import ConvClassifier
from .diffusers_models import DecodedImageClassifier, DiffusersDiT, DiffusersUNet, LatentDecoder
from .embeddings import ClassEmbedding, TimeEmbedding, timestep_embedding
from .encoder_classifier import EncoderClassifier
from .flat_classifiers import LinearClassifier, MLPClassifier
from .mlp import MLPDenoiser
from .offtheshelf import OffTheShelfClassifier
from .trained_classifier import TrainedClassifier
from .unet import UNet

__all__ = [
    "ClassEmbedding",
    "ConvClassifier",
    "DecodedImageClassifier",
    "DiffusersDiT",
    "DiffusersUNet",
    "EncoderClassifier",
    "LatentDecoder",
    "LinearClassifier",
    "MLPClassifier",
    "MLPDenoiser",
    "OffTheShelfClassifier",
    "SwapReport",
    "TimeEmbedding",
    "TrainedClassifier",
    "UNet",
    "classifier_head",
    "swap_relu_for_softplus",
    "timestep_embedding",
]
