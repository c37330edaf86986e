"""The in-memory dataset every loader returns, and the dataset registry."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from epir.errors import DatasetError
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
        """Check the fields agree and hold what training needs, so that a dataset built in Python fails here, in one
        line naming the field, sample and fix, not mid-training: x (N, C, H, W) finite numbers (a NumPy array or
        another real dtype becomes float32), y (N,) whole-number class indices (becoming int64).
        """
        self.x = _as_maps(self.x)
        n = len(self.x)
        for attr in ("y", "subjects", "subject_ids", "sources", "clips"):
            if len(getattr(self, attr)) != n:
                raise DatasetError(f"FlowDataset.{attr} has {len(getattr(self, attr))} entries, x has {n}; give one "
                                   "per map.")
        self.y = _as_labels(self.y, len(self.class_names))
        bad = _first_bad_sample(self.x, self.y, len(self.class_names))
        if bad is not None:
            i, what = bad
            raise DatasetError(f"FlowDataset sample {i} ({self.sources[i]}/{self.subjects[i]} clip {self.clips[i]!r}): "
                               f"{what}.")

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


def _as_maps(x: Any) -> torch.Tensor:
    """``FlowDataset.x`` as a float32 tensor (N, C, H, W), or one error saying what it is and the fix."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise DatasetError(f"FlowDataset.x must be a tensor or NumPy array of maps (N, 3, H, W), got "
                           f"{type(x).__name__}.")
    if x.dtype == torch.bool or x.is_complex():
        raise DatasetError(f"FlowDataset.x must hold real numbers (0-255 per channel), got dtype {x.dtype}.")
    if x.ndim == 4 and x.shape[-1] == 3 and x.shape[1] != 3:
        raise DatasetError(f"FlowDataset.x has shape {tuple(x.shape)}, channels last; epir takes (N, 3, H, W): "
                           "pass x.permute(0, 3, 1, 2).")
    if x.ndim != 4:
        raise DatasetError(f"FlowDataset.x has shape {tuple(x.shape)}; expected (N, C, H, W) maps, channels u, v, "
                           "strain.")
    return x if x.dtype == torch.float32 else x.to(torch.float32)


def _as_labels(y: Any, num_classes: int) -> torch.Tensor:
    """``FlowDataset.y`` as an int64 tensor (N,) of whole numbers, or one error."""
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    if not isinstance(y, torch.Tensor):
        y = torch.as_tensor(list(y))
    if y.ndim != 1:
        raise DatasetError(f"FlowDataset.y has shape {tuple(y.shape)}; expected one class index per map (N,).")
    if y.dtype == torch.int64:
        return y
    if y.dtype == torch.bool or y.is_complex() or (y.is_floating_point() and not bool(
            (torch.isfinite(y) & (y == y.round())).all())):
        raise DatasetError(f"FlowDataset.y must hold whole-number class indices 0..{num_classes - 1}, got dtype "
                           f"{y.dtype} with values such as {y[:3].tolist()}.")
    return y.to(torch.int64)


def _first_bad_sample(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[int, str] | None:
    """The first sample with a non-finite map value or a label outside the classes, and what is wrong with it."""
    if len(x) == 0:
        return None
    finite = torch.isfinite(x).flatten(1).all(1)
    in_range = (y >= 0) & (y < num_classes)
    ok = finite & in_range
    if bool(ok.all()):
        return None
    i = int((~ok).nonzero()[0])
    if not bool(finite[i]):
        return i, "its map holds a NaN or infinite value; fix or leave out the map (maps are finite, 0-255)"
    return i, f"label {int(y[i])} is not a class index 0..{num_classes - 1}; fix the label or class_names"


DATASETS: Registry[Callable[..., FlowDataset]] = Registry("dataset")


def register_dataset(*, description: str = "") -> Callable:
    """Register a loader ``fn(root=None, seed=0, **kwargs) -> FlowDataset``."""
    return DATASETS.register(description=description)
