"""The study's step runner lives in :mod:`lightning_guidance.launch.steps` (a step, its config edits and
:class:`StepRunner`); this name is kept for the study's callers."""

from ..launch.steps import MARKS, StepRunner, digest  # noqa: F401
