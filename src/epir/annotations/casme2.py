"""CASME II coding sheets (``CASME2-coding-20140508.xlsx`` and its 2019 revision ``CASME2-coding-20190701.xlsx``).

Layout: one worksheet, the header in row 1 (``Subject, Filename, <blank>, OnsetFrame, ApexFrame,
OffsetFrame, <blank>, Action Units, Estimated Emotion`` and, in 2019, ``Objective Classes``), one row per
clip, 255 clips of 26 subjects. Quirks handled here or by ``fixes.csv``:

- ``Subject`` is written ``01`` (text); epir writes ``sub01`` like the frame folders and the MEGC2019 list.
- ``Action Units`` are integers for a single AU (``12``) and text otherwise (``4+L10``); kept as text.
- ``sub04/EP12_01f`` has apex ``/`` and ``sub05/EP09_05f`` apex = onset (69): both are dropped by
  ``fixes.csv``, as in the official MEGC2019 list.
- The 2019 revision relabels three clips of sub24 from sadness to surprise; frames are unchanged.
"""
from __future__ import annotations

import re

import pandas as pd

from epir.errors import DatasetError

DATASET = "casme2"
TITLE = "CASME II"
EMOTIONS = ("happiness", "disgust", "repression", "surprise", "others", "sadness", "fear")

LAYOUTS = (
    {
        "name": "CASME II coding sheet",
        "required": {"Subject": "subject", "Filename": "clip", "OnsetFrame": "onset", "ApexFrame": "apex",
                     "OffsetFrame": "offset", "Estimated Emotion": "emotion"},
        "optional": {"Action Units": "action_units"},
    },
)

_SUBJECT = re.compile(r"^(?:sub)?0*(\d{1,3})$", re.IGNORECASE)


def normalise(table: pd.DataFrame, layout: dict, source: str) -> pd.DataFrame:
    """Canonical subjects (``sub01``) and lower-case emotions; ``table`` holds stripped text cells."""
    out = table.copy()
    subjects = []
    for row, value in zip(out["_row"], out["subject"]):
        m = _SUBJECT.match(value)
        if not m:
            raise DatasetError(f"{source}, row {row}: Subject {value!r} is not a CASME II subject number "
                               "(expected e.g. '01' or 'sub01').")
        subjects.append(f"sub{int(m.group(1)):02d}")
    out["subject"] = subjects
    out["emotion"] = out["emotion"].str.lower()
    return out
