"""CAS(ME)^3 part A micro-expression labels (``CAS(ME)3_part_A_ME_label_JpgIndex_v2.xlsx``, worksheet ``label``).

Layout: header in row 1 (``Subject, Filename, Onset, Apex, Offset, AU, Objective class, emotion``), 860
micro-expressions of 94 subjects, every cell stored as text. ``Filename`` is the task video (``a`` to
``m``) and a video holds several micro-expressions, so a clip is named ``<video>_<onset>`` (``a_355``),
the naming of public CAS(ME)^3 clip folders (``spNO.1_a_355``); the onset is the sheet's, before fixes.
The ``video`` column keeps the task letter for the frame reader. Quirks handled here or by ``FIXES`` below:

- one video letter is upper case (``spNO.14``, ``J``): lower-cased;
- emotions ``happy``/``sad``/``Others``: lower-cased and renamed ``happiness``/``sadness``/``others``;
- impossible frame triples (apex before onset, onset after apex, offset 0, frame 0) are corrected in
  ``FIXES`` with the values used by tvaranka/meb; the many rows with apex = onset are flagged in the
  ``issue`` column, not changed.

Frames. CAS(ME)^3 part A frames (Li et al., TPAMI 2022; 30 fps, 1280x720 colour and depth; 100 subjects).

Layouts accepted (``ROOT`` may be the folder shown or any folder up to four levels above it):

``part_A/data/part_A/spNO.1/a/color/0.jpg``  the release: per subject (``spNO.1``; some copies write
    ``spNo.1``, matched case-insensitively) one folder per task video (``a`` to ``m``), its colour frames in
    ``color/`` named by their index, which is the sheet's JpgIndex (Onset/Apex/Offset). The ``depth/``
    frames are not used. A video folder with its frames directly inside (no ``color/``) is accepted too.
``spNO.1_a_355/355.jpg``  pre-cut clip folders ``<subject>_<video>_<onset>`` (as some public tools write
    them), frames numbered as in the sheet.

A video holds several micro-expressions, so epir names a clip ``<video>_<onset>`` (``a_355``; see
:mod:`epir.annotations.casme3`); several clips then read the same video folder, each only its
onset-to-offset frames. Sheet looked for in ``ROOT``: ``CAS(ME)3_part_A_ME_label_JpgIndex_v2.xlsx``, then any
``*part_A_ME_label*.xlsx``.
"""
from __future__ import annotations

import os

import pandas as pd

from epir.datasets.base import RawLayout, register_raw, register_source
from epir.datasets.frames import read_raw
from epir.errors import DatasetError

# ------------------------------------------------------------------------------------------ label sheet

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

#: Annotation fixes of this dataset (see :func:`epir.datasets.sheets.load_fixes`).
FIXES = """\
dataset,sheet,subject,clip,action,field,old,new,reason
casme3,,spNO.149,d_112,set,apex,83,160,apex 83 precedes onset 112; 160 is the apex used by tvaranka/meb (Casme3.data_frame)
casme3,,spNO.216,d_3647,set,onset,3647,2647,onset 3647 follows apex 2668 and offset 2694: a digit slip for 2647 (as corrected in tvaranka/meb)
casme3,,spNO.214,c_5,set,offset,3460,34,offset 3460 makes a 3456-frame micro-expression; 34 as corrected in tvaranka/meb
casme3,,spNO.40,e_1812,set,offset,0,1845,offset 0 precedes onset 1812; 1845 as corrected in tvaranka/meb
casme3,,spNO.40,e_2327,set,offset,0,2403,offset 0 precedes onset 2327; 2403 as corrected in tvaranka/meb
casme3,,spNO.216,e_0,set,onset,0,1,frame 0 does not exist (frames are numbered from 1; 0.jpg is missing from the released frames); 1 as corrected in tvaranka/meb
casme3,,spNO.216,e_0,set,apex,0,1,frame 0 does not exist (frames are numbered from 1; 0.jpg is missing from the released frames); 1 as corrected in tvaranka/meb
"""

# ------------------------------------------------------------------------------------------ frames

def _clip_dirs(row: pd.Series) -> list[tuple[str, tuple[str, ...], bool]]:
    subject, video, clip = row["subject"], row["video"], row["clip"]
    return [
        ("subject/video/color", (subject, video, "color"), False),
        ("subject/video", (subject, video), False),
        ("subject_video_onset", (f"{subject}_{clip}",), True),
    ]


LAYOUT = RawLayout(
    name="casme3",
    title="CAS(ME)^3 part A",
    subject_dir=r"spNO\.\d{1,3}(_[a-m]_\d+)?",
    sheets=("CAS(ME)3_part_A_ME_label_JpgIndex_v2.xlsx", "*part_A_ME_label*.xlsx", "*part_A*.xlsx"),
    clip_dirs=_clip_dirs,
    layouts=("part_A/data/part_A/spNO.1/a/color/0.jpg", "spNO.1_a_355/355.jpg (pre-cut clips)"),
)


@register_raw(LAYOUT, description="CAS(ME)^3 part A: part_A/data/part_A/spNO.1/a/color/<JpgIndex>.jpg")
def casme3(root: str | os.PathLike, *, sheet: str | os.PathLike | None = None, labels: str | None = "native",
           fixes: bool = True) -> pd.DataFrame:
    """CAS(ME)^3 part A clips under ``root`` (see the module docstring and
    :func:`epir.preprocess.datasets.locate_clips`).
    """
    return read_raw(LAYOUT, root, sheet=sheet, labels=labels, fixes=fixes)


register_source(__name__)
