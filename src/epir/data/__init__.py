"""Datasets: ``load_dataset(name, root=..., seed=...)`` and ``list_datasets()``."""
from __future__ import annotations

import inspect
from typing import Any

from epir.data.base import CHANNELS, COMPOSITE_CLASSES, DATASETS, FlowDataset, register_dataset


def list_datasets(pattern: str = "*") -> list[str]:
    """Names of the registered datasets."""
    return DATASETS.names(pattern)


def load_dataset(name: str, root: str | None = None, **kwargs: Any) -> FlowDataset:
    """Load registered dataset ``name`` (``root`` for datasets on disk; ``seed`` etc. for generated ones).

    Keyword arguments a loader does not take (e.g. ``seed`` for a dataset on disk) are ignored.
    """
    loader = DATASETS.get(name)
    params = inspect.signature(loader).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return loader(root=root, **kwargs)


# Import every dataset module so registration is complete.
from epir.data import flowmaps, synthetic  # noqa: E402,F401

__all__ = ["CHANNELS", "COMPOSITE_CLASSES", "DATASETS", "FlowDataset", "list_datasets", "load_dataset",
           "register_dataset"]
