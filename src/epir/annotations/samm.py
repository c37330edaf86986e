"""SAMM micro-expression FACS codes (``SAMM_Micro_FACS_Codes_v2.xlsx``, worksheet ``MICRO_ONLY``).

Layout: thirteen rows of title, citation notes and a symbol key precede the table; the header row
(row 14 in v2) is found by its column names: ``Subject, Filename, Inducement Code, Onset Frame, Apex Frame,
Offset Frame, Duration, Micro, Action Units, Estimated Emotion, Objective Classes, Notes``. 159
micro-expressions of 29 subjects. Quirks handled here:

- ``Subject`` is text ``006``; kept zero-padded to three digits (the HTNet composite CSV writes ``006``,
  the official MEGC2019 list ``6``).
- ``Duration`` is an Excel formula; it is not read (offset - onset + 1 says the same).
- Emotions are capitalised (``Anger``) and the catch-all class is ``Other``: lower-cased, ``other`` ->
  ``others`` as in the other datasets.
- ``Action Units`` may contain ``or`` alternatives (``R14A or 17A or 24A``) and ``/``; kept as written.
"""
from __future__ import annotations

import re

import pandas as pd

from epir.errors import DatasetError

DATASET = "samm"
TITLE = "SAMM"
EMOTIONS = ("anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise", "others")

LAYOUTS = (
    {
        "name": "SAMM FACS codes",
        "required": {"Subject": "subject", "Filename": "clip", "Onset Frame": "onset", "Apex Frame": "apex",
                     "Offset Frame": "offset", "Estimated Emotion": "emotion"},
        "optional": {"Action Units": "action_units"},
    },
)

_SUBJECT = re.compile(r"^\d{1,3}$")
_SYNONYMS = {"other": "others"}


def normalise(table: pd.DataFrame, layout: dict, source: str) -> pd.DataFrame:
    """Zero-padded subjects (``006``) and lower-case emotions with ``other`` -> ``others``."""
    out = table.copy()
    for row, value in zip(out["_row"], out["subject"]):
        if not _SUBJECT.match(value):
            raise DatasetError(f"{source}, row {row}: Subject {value!r} is not a SAMM subject number "
                               "(expected e.g. '006').")
    out["subject"] = out["subject"].str.zfill(3)
    out["emotion"] = out["emotion"].str.lower().replace(_SYNONYMS)
    return out
