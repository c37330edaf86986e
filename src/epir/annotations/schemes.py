"""Former home of the label schemes: see :mod:`epir.datasets.schemes`."""
from __future__ import annotations

from epir.datasets.schemes import LABEL_SCHEMES, NATIVE, LabelScheme, UnknownChoiceError, get_scheme, list_schemes

__all__ = ["LABEL_SCHEMES", "NATIVE", "LabelScheme", "UnknownChoiceError", "get_scheme", "list_schemes"]
