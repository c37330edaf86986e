"""What every source dataset registers: its label-sheet reader (a module) and its frame layout.

Each source dataset is one module of :mod:`epir.datasets` (``casme2``, ``samm``, ``smic``, ``casme3``) that
ends with ``register_source(...)``; this module holds the registries they go into, and imports none of them.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pandas as pd

from epir.registry import Registry

#: How many folder levels below ``root`` the dataset's subject folders are searched for.
SEARCH_DEPTH = 4

#: Registered readers: ``fn(root, *, sheet=None, labels="native") -> DataFrame``.
RAW_DATASETS: Registry[Callable[..., pd.DataFrame]] = Registry("raw dataset")


@dataclass(frozen=True)
class RawLayout:
    """How one dataset lays out its frames.

    Attributes:
        name: the dataset (as in :mod:`epir.annotations`).
        title: its name for messages.
        subject_dir: regular expression (full match, case-insensitive) of its subject folders.
        sheets: file name patterns of its label sheets, in order of preference.
        clip_dirs: ``fn(row) -> [(layout name, (folder, ...), cut), ...]``: candidate clip folders below the
            dataset folder, path components matched case-insensitively; ``cut`` says the folder holds only the
            expression (its first frame is the onset), used when its numbering differs from the sheet's.
        skip_base: ``fn(relative path of a candidate dataset folder) -> bool``: folders never used.
        prefer: ``fn(relative path) -> sort key`` among several candidate dataset folders (lowest first).
        layouts: one line per accepted layout, for messages.
    """

    name: str
    title: str
    subject_dir: str
    sheets: tuple[str, ...]
    clip_dirs: Callable[[pd.Series], list[tuple[str, tuple[str, ...], bool]]]
    layouts: tuple[str, ...]
    skip_base: Callable[[Path], bool] = lambda rel: False
    prefer: Callable[[Path], object] = lambda rel: 0
    pattern: re.Pattern = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", re.compile(self.subject_dir, re.IGNORECASE))


LAYOUTS: dict[str, RawLayout] = {}


def register_raw(layout: RawLayout, *, description: str = "") -> Callable:
    """Register a reader for ``layout.name`` and remember its layout (for the search of dataset folders)."""
    LAYOUTS[layout.name] = layout
    return RAW_DATASETS.register(layout.name, description=description)


def list_raw_datasets() -> list[str]:
    """Names of the registered raw dataset readers."""
    return RAW_DATASETS.names()


#: The label-sheet readers, by dataset name: modules with ``DATASET``, ``TITLE``, ``EMOTIONS``, ``LAYOUTS``
#: (sheet layouts), ``normalise(table, layout, source)``, optionally ``check(table)`` and ``FIXES`` (CSV text).
READERS: dict[str, ModuleType] = {}


def register_source(module_name: str) -> None:
    """Register the source dataset defined by module ``module_name`` (its sheet reader; call at its end)."""
    module = sys.modules[module_name]
    READERS[module.DATASET] = module
