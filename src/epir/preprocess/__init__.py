"""Preprocessing: dense optical flow, optical strain and the (3, 28, 28) flow maps models read."""
from __future__ import annotations

from epir.preprocess.flow import (
    FARNEBACK_PARAMS,
    FLOW_METHODS,
    compute_flow,
    flow_map,
    flow_to_map,
    minmax_255,
    optical_strain,
    to_gray,
)

__all__ = [
    "FARNEBACK_PARAMS",
    "FLOW_METHODS",
    "compute_flow",
    "flow_map",
    "flow_to_map",
    "minmax_255",
    "optical_strain",
    "to_gray",
]
