#!/usr/bin/env python
"""Entry point: ``python cli.py fit|validate|test|predict --config configs/...yaml`` or ``python cli.py study``."""

from lightning_guidance.console import main

if __name__ == "__main__":
    main()
