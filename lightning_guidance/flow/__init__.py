"""Rectified-flow post-processing with top-k nearest-neighbour targets (Zhao & Schwing 2025, §5; docs/math.md §5).

Math only, no Lightning: the straight path and its target (:mod:`.path`), per-sample seeded draws of the
neighbour and the time (:mod:`.draws`), ODE integration with a count of function evaluations (:mod:`.integrate`),
faiss top-k search (:mod:`.neighbours`) and the digest-keyed neighbour cache (:mod:`.cache`).
"""

from .cache import NeighbourCache, array_digest, json_digest
from .draws import draw_neighbour_and_time, sample_keys
from .integrate import INTEGRATORS, FlowSolution, check_integrator, dopri5, euler, integrate
from .neighbours import IndexSettings, top_k_neighbours
from .path import flow_matching_loss, interpolate, velocity_target

__all__ = [
    "INTEGRATORS",
    "FlowSolution",
    "IndexSettings",
    "NeighbourCache",
    "array_digest",
    "check_integrator",
    "dopri5",
    "draw_neighbour_and_time",
    "euler",
    "flow_matching_loss",
    "integrate",
    "interpolate",
    "json_digest",
    "sample_keys",
    "top_k_neighbours",
    "velocity_target",
]
