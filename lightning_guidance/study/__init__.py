"""The study: every seed paper's question on data that ships with the suite, one command, one report.

``python cli.py study --config configs/digits/study.yaml`` (preset ``tiny``): :mod:`.sections` lists the sections
(each a :class:`~.section.Section` in its own module), :mod:`..launch.steps` runs their steps, :mod:`.report` writes the
report; :mod:`.presets` sizes them.
"""

from .command import main
from .sections import SECTIONS

__all__ = ["SECTIONS", "main"]
