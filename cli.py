#!/usr/bin/env python
"""Entry point: ``python cli.py fit|validate|test|predict --config configs/...yaml`` or ``python cli.py study``."""

from lightning_guidance.cli import console_main

if __name__ == "__main__":
    console_main()
