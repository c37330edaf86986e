"""CASME II coding sheets (``CASME2-coding-20140508.xlsx`` and its 2019 revision ``CASME2-coding-20190701.xlsx``).

Layout: one worksheet, the header in row 1 (``Subject, Filename, <blank>, OnsetFrame, ApexFrame,
OffsetFrame, <blank>, Action Units, Estimated Emotion`` and, in 2019, ``Objective Classes``), one row per
clip, 255 clips of 26 subjects. Quirks handled here or by ``FIXES`` below:

- ``Subject`` is written ``01`` (text); epir writes ``sub01`` like the frame folders and the MEGC2019 list.
- ``Action Units`` are integers for a single AU (``12``) and text otherwise (``4+L10``); kept as text.
- ``sub04/EP12_01f`` has apex ``/`` and ``sub05/EP09_05f`` apex = onset (69): both are dropped by
  ``FIXES``, as in the official MEGC2019 list.
- The 2019 revision relabels three clips of sub24 from sadness to surprise; frames are unchanged.

Frames. CASME II frames (Yan et al., 2014; 200 fps, 640x480; 26 subjects).

Layouts accepted (``ROOT`` may be the folder shown or any folder up to four levels above it):

``CASME2_RAW_selected/sub01/EP02_01f/img46.jpg``  the raw frames as distributed (also named ``CASME2-RAW``,
    ``CASME2_RAW``); one folder per clip, frames numbered as in the sheet's OnsetFrame/ApexFrame/OffsetFrame.
``Cropped/sub01/EP02_01f/reg_img46.jpg``  the distributed face crops (``Cropped``, ``Cropped_original``,
    ``CASME2_Cropped``): same folders and frame numbers, ``reg_`` prefix. Small tight crops: dlib may not
    find a face in them; process them with ``--no-align``.

When both are present under ``ROOT`` the raw frames are used (the pipeline aligns and crops them itself);
point ``--root`` at the cropped folder to use the crops. Subjects and clips are named as in the sheet
(``sub01``, ``EP02_01f``). Sheets looked for in ``ROOT``: ``CASME2-coding-20140508.xlsx`` (the one the
MEGC2019 composite was made from), then any ``CASME2-coding-*.xlsx`` / ``.csv``.
"""
from __future__ import annotations

import os
import re

import pandas as pd

from epir.datasets.base import RawLayout, register_raw, register_source
from epir.datasets.frames import read_raw
from epir.errors import DatasetError

# ------------------------------------------------------------------------------------------ label sheet

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

#: Annotation fixes of this dataset (see :func:`epir.datasets.sheets.load_fixes`).
FIXES = """\
dataset,sheet,subject,clip,action,field,old,new,reason
casme2,,sub04,EP12_01f,drop,apex,/,,"apex is written '/' (not annotated), so there is no onset-to-apex motion; the official MEGC2019 composite list leaves this clip out"
casme2,,sub05,EP09_05f,drop,apex,69,,"apex equals onset (frame 69), so the onset-to-apex motion is empty; the official MEGC2019 composite list leaves this clip out"
"""

# ------------------------------------------------------------------------------------------ frames

def _clip_dirs(row: pd.Series) -> list[tuple[str, tuple[str, ...], bool]]:
    return [("sub/clip", (row["subject"], row["clip"]), False)]


LAYOUT = RawLayout(
    name="casme2",
    title="CASME II",
    subject_dir=r"sub\d{1,2}",
    sheets=("CASME2-coding-20140508.xlsx", "CASME2-coding-*.xlsx", "CASME2-coding-*.csv", "CASME2*.xlsx"),
    clip_dirs=_clip_dirs,
    layouts=("CASME2_RAW_selected/sub01/EP02_01f/img46.jpg (raw)", "Cropped/sub01/EP02_01f/reg_img46.jpg (cropped)"),
    prefer=lambda rel: "crop" in str(rel).lower(),
)


@register_raw(LAYOUT, description="CASME II: CASME2_RAW_selected/sub01/EP02_01f/img46.jpg or Cropped/.../reg_img46.jpg")
def casme2(root: str | os.PathLike, *, sheet: str | os.PathLike | None = None, labels: str | None = "native",
           fixes: bool = True) -> pd.DataFrame:
    """CASME II clips under ``root`` (see the module docstring and :func:`epir.preprocess.datasets.locate_clips`)."""
    return read_raw(LAYOUT, root, sheet=sheet, labels=labels, fixes=fixes)


register_source(__name__)
