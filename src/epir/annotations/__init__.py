"""Former home of the label-sheet readers, kept so that ``from epir.annotations import ...`` keeps working.

Everything lives in :mod:`epir.datasets` now (one module per source dataset; :mod:`epir.datasets.sheets`
reads the sheets). The ``epir annotations`` command is :mod:`epir.annotations.cli`.
"""
from __future__ import annotations

from epir.datasets import READERS, casme2, casme3, samm, smic
from epir.datasets.schemes import LABEL_SCHEMES, NATIVE, LabelScheme, UnknownChoiceError, get_scheme, list_schemes
from epir.datasets.sheets import COLUMNS, FIX_COLUMNS, FIXABLE, AnnotationWarning, load_fixes, read_annotations

__all__ = [
    "COLUMNS", "FIX_COLUMNS", "FIXABLE", "LABEL_SCHEMES", "NATIVE", "READERS", "AnnotationWarning", "LabelScheme",
    "UnknownChoiceError", "casme2", "casme3", "get_scheme", "list_schemes", "load_fixes", "read_annotations", "samm",
    "smic",
]
