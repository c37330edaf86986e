"""Preprocessing: raw frames or videos to the (3, 28, 28) u, v, strain flow maps every epir model reads.

- :mod:`~epir.preprocess.video`: ``read_frames`` (a video file or a frame folder) and :class:`ClipError`;
- :mod:`~epir.preprocess.face`: :class:`FaceAligner` (dlib face, 68 landmarks, eye-line alignment, crop);
- :mod:`~epir.preprocess.apex`: ``estimate_apex`` where no apex is annotated;
- :mod:`~epir.preprocess.flow`: optical flow (TV-L1, Farneback, DIS), optical strain, the flow map;
- :mod:`~epir.preprocess.pipeline`: ``process_clip`` / ``process_video`` and :class:`PreprocessSettings`;
- :mod:`~epir.preprocess.datasets`: where each raw dataset's clips are (one reader per dataset);
- :mod:`~epir.preprocess.batch`: ``preprocess_dataset``, the whole dataset to the megc2019 layout (cached,
  parallel, with a report) - ``epir preprocess`` on the command line.
"""
from __future__ import annotations

import importlib
from typing import Any

from epir.errors import ClipError, FaceModelError, MissingFrameError, NoFaceError, UnreadableImageError
from epir.preprocess.apex import APEX_METHODS, estimate_apex
from epir.preprocess.face import AlignedFace, FaceAligner
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
from epir.preprocess.pipeline import ClipResult, PreprocessSettings, process_clip, process_video
from epir.preprocess.video import read_frames

# Imported on first use: they pull in pandas and the dataset loaders (which themselves use this package).
_LAZY = {
    "preprocess_dataset": "epir.preprocess.batch",
    "PreprocessSummary": "epir.preprocess.batch",
    "locate_clips": "epir.preprocess.datasets",
    "list_raw_datasets": "epir.preprocess.datasets",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'epir.preprocess' has no attribute {name!r}")


__all__ = [
    "APEX_METHODS",
    "AlignedFace",
    "ClipError",
    "ClipResult",
    "FARNEBACK_PARAMS",
    "FLOW_METHODS",
    "FaceAligner",
    "FaceModelError",
    "MissingFrameError",
    "NoFaceError",
    "PreprocessSettings",
    "PreprocessSummary",
    "UnreadableImageError",
    "compute_flow",
    "estimate_apex",
    "flow_map",
    "flow_to_map",
    "list_raw_datasets",
    "locate_clips",
    "minmax_255",
    "optical_strain",
    "preprocess_dataset",
    "process_clip",
    "process_video",
    "read_frames",
    "to_gray",
]
