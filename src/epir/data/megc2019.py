"""Former module of the ``megc2019`` loader, kept so that its imports keep working: the format is
:mod:`epir.flowmaps`, the loader :mod:`epir.data.flowmaps` (``megc2019`` is an alias of ``flowmaps``).
"""
from __future__ import annotations

from epir.data.flowmaps import flowmaps, load_flowmaps, megc2019
from epir.flowmaps import (
    CSV_NAME,
    ENV_VAR,
    IMAGE_DIR,
    LANDMARKS_NAME,
    META_NAME,
    REQUIRED_COLUMNS,
    SOURCES,
    image_path,
    read_flow_image,
    resolve_root,
)

__all__ = ["CSV_NAME", "ENV_VAR", "IMAGE_DIR", "LANDMARKS_NAME", "META_NAME", "REQUIRED_COLUMNS", "SOURCES",
           "flowmaps", "image_path", "load_flowmaps", "megc2019", "read_flow_image", "resolve_root"]
