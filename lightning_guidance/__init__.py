"""lightning-guidance: train, guide, calibrate, post-process and evaluate class-conditional diffusion models."""

__version__ = "0.1.0"
