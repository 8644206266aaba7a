"""Diffusion math with no Lightning: schedules, parameterisations, per-sample noise, samplers."""
