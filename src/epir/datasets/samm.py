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

Frames. SAMM frames (Davison et al., 2018; 200 fps, 2040x1088 gray; 32 subjects, 29 with micro-expressions).

Layout accepted (``ROOT`` may be the folder shown or any folder up to four levels above it):

``SAMM/006/006_1_2/006_05562.jpg``  one folder per subject (three digits), one per clip (the sheet's
    Filename), frames named ``<subject>_<frame number>`` as in the sheet's Onset/Apex/Offset Frame. The
    cropped release (``SAMM_CROP``) has the same folders; when both are under ``ROOT`` the uncropped frames
    are used.

Subjects and clips are named as in the sheet (``006``, ``006_1_2``). Sheets looked for in ``ROOT``:
``SAMM_Micro_FACS_Codes_v2.xlsx``, then any ``SAMM_Micro_FACS_Codes*.xlsx``.
"""
from __future__ import annotations

import os
import re

import pandas as pd

from epir.datasets.base import RawLayout, register_raw, register_source
from epir.datasets.frames import read_raw
from epir.errors import DatasetError

# ------------------------------------------------------------------------------------------ label sheet

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

#: Annotation fixes of this dataset (see :func:`epir.datasets.sheets.load_fixes`).
FIXES = """\
dataset,sheet,subject,clip,action,field,old,new,reason
"""

# ------------------------------------------------------------------------------------------ frames

def _clip_dirs(row: pd.Series) -> list[tuple[str, tuple[str, ...], bool]]:
    return [("subject/clip", (row["subject"], row["clip"]), False)]


LAYOUT = RawLayout(
    name="samm",
    title="SAMM",
    subject_dir=r"\d{3}",
    sheets=("SAMM_Micro_FACS_Codes_v2.xlsx", "SAMM_Micro_FACS_Codes*.xlsx", "SAMM*.xlsx", "SAMM*.csv"),
    clip_dirs=_clip_dirs,
    layouts=("SAMM/006/006_1_2/006_05562.jpg",),
    prefer=lambda rel: "crop" in str(rel).lower(),
)


@register_raw(LAYOUT, description="SAMM: SAMM/006/006_1_2/006_05562.jpg")
def samm(root: str | os.PathLike, *, sheet: str | os.PathLike | None = None, labels: str | None = "native",
         fixes: bool = True) -> pd.DataFrame:
    """SAMM clips under ``root`` (see the module docstring and :func:`epir.preprocess.datasets.locate_clips`)."""
    return read_raw(LAYOUT, root, sheet=sheet, labels=labels, fixes=fixes)


register_source(__name__)
