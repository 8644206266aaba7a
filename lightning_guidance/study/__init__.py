"""The study: every seed paper's question on data that ships with the suite, one command, one report.

``python cli.py study --config configs/digits/study.yaml`` (preset ``tiny``); see :mod:`.runner` for how steps run
and :mod:`.presets` for the presets.
"""

from .runner import SECTIONS, main

__all__ = ["SECTIONS", "main"]
