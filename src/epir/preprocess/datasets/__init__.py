"""Former home of the raw dataset readers, kept so that ``from epir.preprocess.datasets import ...`` keeps
working: see :mod:`epir.datasets` (one module per source dataset) and :mod:`epir.datasets.frames`.
"""
from __future__ import annotations

import epir.datasets  # noqa: F401  (registers every source dataset)
from epir.datasets.base import LAYOUTS, RAW_DATASETS, SEARCH_DEPTH, RawLayout, list_raw_datasets, register_raw
from epir.datasets.frames import (
    FRAME_COLUMNS,
    attach_frames,
    find_dataset_dirs,
    find_sheet,
    index_frames,
    locate_clips,
    read_raw,
)

__all__ = ["FRAME_COLUMNS", "LAYOUTS", "RAW_DATASETS", "SEARCH_DEPTH", "RawLayout", "attach_frames",
           "find_dataset_dirs", "find_sheet", "index_frames", "list_raw_datasets", "locate_clips", "read_raw",
           "register_raw"]
