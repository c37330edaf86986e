"""The in-memory dataset every loader returns, and the dataset registry."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from epir.flowmaps import COMPOSITE_CLASSES
from epir.registry import Registry

#: Canonical channel order of every flow map in epir.
CHANNELS = ("u", "v", "strain")


@dataclass
class FlowDataset:
    """Optical-flow maps with labels and subjects, held in memory.

    Attributes:
        x: flow maps, shape (N, 3, H, W), float32, channels u, v, strain, each 0-255 (per-sample min-max).
        y: labels, shape (N,), int64, indices into ``class_names``.
        subjects: subject of each sample, namespaced by source dataset (``casme2/sub01``).
        subject_ids: the subject id as the source dataset writes it (``sub01``); used to find fold weights.
        sources: source dataset of each sample (``casme2``, ``samm``, ``smic``, ...).
        clips: clip name of each sample.
        class_names: name of each class index.
        name: the registered dataset name.
        info: free-form provenance (root path, generator settings, ...).
    """

    x: torch.Tensor
    y: torch.Tensor
    subjects: list[str]
    subject_ids: list[str]
    sources: list[str]
    clips: list[str]
    class_names: tuple[str, ...] = COMPOSITE_CLASSES
    name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.x)
        for attr in ("y", "subjects", "subject_ids", "sources", "clips"):
            if len(getattr(self, attr)) != n:
                raise ValueError(f"FlowDataset.{attr} has {len(getattr(self, attr))} entries, x has {n}")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(class_names)``)."""
        return len(self.class_names)

    def subject_list(self) -> list[str]:
        """Subjects in order of first appearance (the LOSO fold order)."""
        return list(dict.fromkeys(self.subjects))

    def subset(self, index: Sequence[int] | np.ndarray) -> FlowDataset:
        """The samples at ``index`` (a new dataset sharing class names and info)."""
        idx = np.asarray(index, dtype=np.int64)
        return FlowDataset(
            x=self.x[torch.from_numpy(idx)],
            y=self.y[torch.from_numpy(idx)],
            subjects=[self.subjects[i] for i in idx],
            subject_ids=[self.subject_ids[i] for i in idx],
            sources=[self.sources[i] for i in idx],
            clips=[self.clips[i] for i in idx],
            class_names=self.class_names,
            name=self.name,
            info=self.info,
        )


DATASETS: Registry[Callable[..., FlowDataset]] = Registry("dataset")


def register_dataset(*, description: str = "") -> Callable:
    """Register a loader ``fn(root=None, seed=0, **kwargs) -> FlowDataset``."""
    return DATASETS.register(description=description)
