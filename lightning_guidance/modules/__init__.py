"""Thin LightningModules: wiring, not math."""
