"""CAS(ME)^3 part A micro-expression labels (``CAS(ME)3_part_A_ME_label_JpgIndex_v2.xlsx``, worksheet ``label``).

Layout: header in row 1 (``Subject, Filename, Onset, Apex, Offset, AU, Objective class, emotion``), 860
micro-expressions of 94 subjects, every cell stored as text. ``Filename`` is the task video (``a`` to
``m``) and a video holds several micro-expressions, so a clip is named ``<video>_<onset>`` (``a_355``),
the naming of public CAS(ME)^3 clip folders (``spNO.1_a_355``); the onset is the sheet's, before fixes.
The ``video`` column keeps the task letter for the frame reader. Quirks handled here or by ``fixes.csv``:

- one video letter is upper case (``spNO.14``, ``J``): lower-cased;
- emotions ``happy``/``sad``/``Others``: lower-cased and renamed ``happiness``/``sadness``/``others``;
- impossible frame triples (apex before onset, onset after apex, offset 0, frame 0) are corrected in
  ``fixes.csv`` with the values used by tvaranka/meb; the many rows with apex = onset are flagged in the
  ``issue`` column, not changed.
"""
from __future__ import annotations

import pandas as pd

from epir.errors import DatasetError

DATASET = "casme3"
TITLE = "CAS(ME)^3 part A"
EMOTIONS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "others")

LAYOUTS = (
    {
        "name": "CAS(ME)^3 part A ME labels",
        "required": {"Subject": "subject", "Filename": "video", "Onset": "onset", "Apex": "apex",
                     "Offset": "offset", "emotion": "emotion"},
        "optional": {"AU": "action_units"},
        "worksheet": "label",
    },
)

_SYNONYMS = {"happy": "happiness", "sad": "sadness"}


def normalise(table: pd.DataFrame, layout: dict, source: str) -> pd.DataFrame:
    """Clip names ``<video>_<onset>``, lower-case video letters and canonical emotion names."""
    out = table.copy()
    out["video"] = out["video"].str.lower()
    for row, video, onset in zip(out["_row"], out["video"], out["onset"]):
        if not video or not onset:
            raise DatasetError(f"{source}, row {row}: Filename and Onset are needed to name a CAS(ME)^3 clip "
                               f"(<video>_<onset>), got Filename {video!r} and Onset {onset!r}.")
    out["clip"] = out["video"] + "_" + out["onset"]
    out["emotion"] = out["emotion"].str.lower().replace(_SYNONYMS)
    return out
