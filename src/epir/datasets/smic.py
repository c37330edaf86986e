"""SMIC-HS label sheets: ``smic_apex.xlsx`` (164 clips with an estimated apex) and ``SMIC-HS-E_annotation.xlsx``.

SMIC itself annotates no apex. Two layouts are read:

``smic_apex.xlsx``  header ``data, subject, clip, label, onset_frame, apex_frame, offset_frame, *_path``;
    all 164 clips of the MEGC2019 composite, ``label`` 0 negative / 1 positive / 2 surprise, frames
    numbered as in the long SMIC-HS-E recordings. Seven rows (``s1_ne_02``, ``s2_sur_05``, ...) have
    no offset: they are kept and flagged in the ``issue`` column.
``SMIC-HS-E_annotation.xlsx``  worksheet ``HS`` (``VIS`` is the 25 fps SMIC-VIS and is not read):
    ``Subject, Filename, <blank>, OnsetF, OffsetF, ... Emotion``; 157 clips, onset and offset only
    (``OffsetF`` is an Excel formula whose cached value is read), so ``apex`` is empty. Its emotion for
    ``s18_sur_03`` says negative; ``FIXES`` corrects it to surprise (the clip name and the official
    MEGC2019 list).

Names follow the MEGC2019 list: subjects ``s01`` (the sheets write ``1`` or ``20``) and clips
``s01_ne_01`` (the sheets and the frame folders write ``s1_ne_01``). Every clip name carries its emotion
(``ne``/``po``/``sur``); a row whose emotion disagrees with its name is flagged in ``issue``.

Frames. SMIC-HS frames (Li et al., 2013; the 100 fps high-speed camera, 640x480; 16 subjects, 164 clips).

Layouts accepted (``ROOT`` may be the folder shown or any folder up to four levels above it):

``SMIC/HS/s1/micro/negative/s1_ne_01/image586389.bmp``  the original SMIC-HS release (also inside
    ``SMIC_all_raw`` / ``SMIC_all_cropped``): per subject a ``micro/<negative|positive|surprise>`` folder
    with one folder per clip, cut from onset to offset. Its frame numbers need not be those of the label
    sheets (which number the frames of the long SMIC-E recordings): then the folder's first frame is the
    onset, its last the offset, and the apex is estimated (the report's ``note`` says so).
``HS_long/SMIC_HS_E/s20/s20_ne_01/image17581039.jpg``  the extended SMIC-HS-E release: one folder per clip
    directly under the subject, frames numbered as in the sheets.

Subject folders are ``s1`` or ``s01``, clip folders ``s1_ne_01`` or ``s01_ne_01``; epir names them ``s01``
and ``s01_ne_01`` (the MEGC2019 list). Folders of the other SMIC cameras (paths with a ``VIS`` or ``NIR``
component) are never used. SMIC annotates no apex: ``smic_apex.xlsx`` (all 164 clips, with an estimated
apex) is looked for first, then ``SMIC-HS-E_annotation.xlsx`` (no apex: every apex is estimated).
"""
from __future__ import annotations

import os
import re

import pandas as pd

from epir.datasets.base import RawLayout, register_raw, register_source
from epir.datasets.frames import read_raw
from epir.errors import DatasetError

# ------------------------------------------------------------------------------------------ label sheet

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

#: Annotation fixes of this dataset (see :func:`epir.datasets.sheets.load_fixes`).
FIXES = """\
dataset,sheet,subject,clip,action,field,old,new,reason
smic,SMIC-HS-E*,s18,s18_sur_03,set,emotion,negative,surprise,the clip is named _sur_ and smic_apex.xlsx and the official MEGC2019 list label it surprise; the HS worksheet's 'negative' is a slip
"""

# ------------------------------------------------------------------------------------------ frames

_EMOTION_DIR = {"ne": "negative", "po": "positive", "sur": "surprise"}


def _clip_dirs(row: pd.Series) -> list[tuple[str, tuple[str, ...], bool]]:
    number = int(row["subject"][1:])
    subjects = dict.fromkeys((f"s{number}", f"s{number:02d}"))
    token, index = row["clip"].split("_")[1:]
    clips = dict.fromkeys((f"s{number}_{token}_{index}", f"s{number:02d}_{token}_{index}"))
    out: list[tuple[str, tuple[str, ...], bool]] = [("SMIC-HS micro/<emotion>", (s, "micro", _EMOTION_DIR[token], c), True) for s in subjects for c in clips]
    out += [("SMIC-HS-E subject/clip", (s, c), False) for s in subjects for c in clips]
    return out


LAYOUT = RawLayout(
    name="smic",
    title="SMIC-HS",
    subject_dir=r"s\d{1,2}",
    sheets=("smic_apex.xlsx", "SMIC-HS-E_annotation.xlsx", "smic*.xlsx", "SMIC*.xlsx"),
    clip_dirs=_clip_dirs,
    layouts=("SMIC/HS/s1/micro/negative/s1_ne_01/image586389.bmp", "HS_long/SMIC_HS_E/s20/s20_ne_01/image17581039.jpg"),
    skip_base=lambda rel: any(part.upper() in ("VIS", "NIR") for part in rel.parts),
    prefer=lambda rel: ("crop" in str(rel).lower(), "HS" not in str(rel).upper()),
)


@register_raw(LAYOUT, description="SMIC-HS: SMIC/HS/s1/micro/negative/s1_ne_01/image*.bmp or "
                                  "HS_long/SMIC_HS_E/s20/s20_ne_01/")
def smic(root: str | os.PathLike, *, sheet: str | os.PathLike | None = None, labels: str | None = "native",
         fixes: bool = True) -> pd.DataFrame:
    """SMIC-HS clips under ``root`` (see the module docstring and :func:`epir.preprocess.datasets.locate_clips`)."""
    return read_raw(LAYOUT, root, sheet=sheet, labels=labels, fixes=fixes)


register_source(__name__)
