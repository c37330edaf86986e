"""The source datasets: one module each (everything the toolkit knows about it) and what they share.

- :mod:`~epir.datasets.casme2`, :mod:`~epir.datasets.samm`, :mod:`~epir.datasets.smic`,
  :mod:`~epir.datasets.casme3`: the dataset's label-sheet layouts and quirks, emotion names, annotation
  fixes and frame layouts, registered once (``register_source``, ``register_raw``);
- :mod:`~epir.datasets.composite`: the MEGC2019 composite (CASME II + SAMM + SMIC-HS) from the raw datasets;
- :mod:`~epir.datasets.sheets`: label sheets into one canonical table (:func:`read_annotations`);
- :mod:`~epir.datasets.frames`: where each annotated clip's frames are (:func:`locate_clips`);
- :mod:`~epir.datasets.schemes`: label schemes; :mod:`~epir.datasets.base`: the registries.

Add a dataset: one module here with its sheet reader (``DATASET``, ``TITLE``, ``EMOTIONS``, ``LAYOUTS``,
``normalise``), its ``FIXES``, its :class:`~epir.datasets.base.RawLayout` and reader function decorated
``@register_raw(LAYOUT)``, ending with ``register_source(__name__)``; import it below.
"""
from __future__ import annotations

# Every source dataset, imported so that registration is complete.
from epir.datasets import casme2, casme3, composite, samm, smic  # noqa: F401
from epir.datasets.base import LAYOUTS, RAW_DATASETS, READERS, RawLayout, list_raw_datasets, register_raw
from epir.datasets.frames import FRAME_COLUMNS, locate_clips
from epir.datasets.schemes import LABEL_SCHEMES, NATIVE, LabelScheme, get_scheme, list_schemes
from epir.datasets.sheets import COLUMNS, FIX_COLUMNS, FIXABLE, AnnotationWarning, load_fixes, read_annotations

__all__ = ["COLUMNS", "FIXABLE", "FIX_COLUMNS", "FRAME_COLUMNS", "LABEL_SCHEMES", "LAYOUTS", "NATIVE", "RAW_DATASETS",
           "READERS", "AnnotationWarning", "LabelScheme", "RawLayout", "get_scheme", "list_raw_datasets",
           "list_schemes", "load_fixes", "locate_clips", "read_annotations", "register_raw"]
