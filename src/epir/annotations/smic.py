"""SMIC-HS label sheets: ``smic_apex.xlsx`` (164 clips with an estimated apex) and ``SMIC-HS-E_annotation.xlsx``.

SMIC itself annotates no apex. Two layouts are read:

``smic_apex.xlsx``  header ``data, subject, clip, label, onset_frame, apex_frame, offset_frame, *_path``;
    all 164 clips of the MEGC2019 composite, ``label`` 0 negative / 1 positive / 2 surprise, frames
    numbered as in the long SMIC-HS-E recordings. Seven rows (``s1_ne_02``, ``s2_sur_05``, ...) have
    no offset: they are kept and flagged in the ``issue`` column.
``SMIC-HS-E_annotation.xlsx``  worksheet ``HS`` (``VIS`` is the 25 fps SMIC-VIS and is not read):
    ``Subject, Filename, <blank>, OnsetF, OffsetF, ... Emotion``; 157 clips, onset and offset only
    (``OffsetF`` is an Excel formula whose cached value is read), so ``apex`` is empty. Its emotion for
    ``s18_sur_03`` says negative; ``fixes.csv`` corrects it to surprise (the clip name and the official
    MEGC2019 list).

Names follow the MEGC2019 list: subjects ``s01`` (the sheets write ``1`` or ``20``) and clips
``s01_ne_01`` (the sheets and the frame folders write ``s1_ne_01``). Every clip name carries its emotion
(``ne``/``po``/``sur``); a row whose emotion disagrees with its name is flagged in ``issue``.
"""
from __future__ import annotations

import re

import pandas as pd

from epir.errors import DatasetError

DATASET = "smic"
TITLE = "SMIC-HS"
EMOTIONS = ("negative", "positive", "surprise")

LAYOUTS = (
    {
        "name": "smic_apex sheet",
        "required": {"subject": "subject", "clip": "clip", "label": "emotion", "onset_frame": "onset",
                     "apex_frame": "apex", "offset_frame": "offset"},
        "optional": {},
    },
    {
        "name": "SMIC-HS-E annotation (worksheet HS)",
        "required": {"Subject": "subject", "Filename": "clip", "OnsetF": "onset", "OffsetF": "offset",
                     "Emotion": "emotion"},
        "optional": {},
        "worksheet": "HS",
    },
)

_CLIP = re.compile(r"^s(\d{1,2})_(ne|po|sur)_(\d{1,2})$", re.IGNORECASE)
_SUBJECT = re.compile(r"^s?0*(\d{1,2})$", re.IGNORECASE)
_TOKEN = {"ne": "negative", "po": "positive", "sur": "surprise"}
_LABEL = {"0": "negative", "1": "positive", "2": "surprise"}


def normalise(table: pd.DataFrame, layout: dict, source: str) -> pd.DataFrame:
    """MEGC2019 names (``s01``, ``s01_ne_01``) and emotions from ``label`` or ``Emotion``."""
    out = table.copy()
    subjects, clips = [], []
    for row, subject, clip in zip(out["_row"], out["subject"], out["clip"]):
        ms, mc = _SUBJECT.match(subject), _CLIP.match(clip)
        if not ms:
            raise DatasetError(f"{source}, row {row}: subject {subject!r} is not a SMIC subject "
                               "(expected e.g. 1 or s01).")
        if not mc:
            raise DatasetError(f"{source}, row {row}: clip {clip!r} is not a SMIC clip name "
                               "(expected s<subject>_<ne|po|sur>_<n>, e.g. s1_ne_01).")
        if int(mc.group(1)) != int(ms.group(1)):
            raise DatasetError(f"{source}, row {row}: clip {clip!r} does not belong to subject {subject!r}.")
        subjects.append(f"s{int(ms.group(1)):02d}")
        clips.append(f"s{int(mc.group(1)):02d}_{mc.group(2).lower()}_{int(mc.group(3)):02d}")
    out["subject"], out["clip"] = subjects, clips
    if "apex" in layout["required"].values():  # smic_apex: the emotion is the composite label
        bad = out[~out["emotion"].isin(list(_LABEL))]
        if len(bad):
            row, value = bad["_row"].iloc[0], bad["emotion"].iloc[0]
            raise DatasetError(f"{source}, row {row}: label {value!r} is not 0 (negative), 1 (positive) "
                               "or 2 (surprise).")
        out["emotion"] = out["emotion"].map(_LABEL)
    else:
        out["emotion"] = out["emotion"].str.lower()
    return out


def check(table: pd.DataFrame) -> pd.Series:
    """Flag rows whose emotion disagrees with the ``ne``/``po``/``sur`` in their clip name (after fixes)."""
    named = table["clip"].str.split("_").str[1].map(_TOKEN)
    issues = [f"emotion {e!r} disagrees with the clip name ({n})" if e != n else ""
              for e, n in zip(table["emotion"], named)]
    return pd.Series(issues, index=table.index, dtype=object)
