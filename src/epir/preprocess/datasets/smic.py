"""SMIC-HS frames (Li et al., 2013; the 100 fps high-speed camera, 640x480; 16 subjects, 164 clips).

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

import pandas as pd

from epir.preprocess.datasets import RawLayout, read_raw, register_raw

_EMOTION_DIR = {"ne": "negative", "po": "positive", "sur": "surprise"}


def _clip_dirs(row: pd.Series) -> list[tuple[str, tuple[str, ...], bool]]:
    number = int(row["subject"][1:])
    subjects = dict.fromkeys((f"s{number}", f"s{number:02d}"))
    token, index = row["clip"].split("_")[1:]
    clips = dict.fromkeys((f"s{number}_{token}_{index}", f"s{number:02d}_{token}_{index}"))
    out = [("SMIC-HS micro/<emotion>", (s, "micro", _EMOTION_DIR[token], c), True) for s in subjects for c in clips]
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


@register_raw(LAYOUT, description="SMIC-HS: SMIC/HS/s1/micro/negative/s1_ne_01/image*.bmp or HS_long/SMIC_HS_E/s20/s20_ne_01/")
def smic(root: str | os.PathLike, *, sheet: str | os.PathLike | None = None, labels: str | None = "native",
         fixes: bool = True) -> pd.DataFrame:
    """SMIC-HS clips under ``root`` (see the module docstring and :func:`epir.preprocess.datasets.locate_clips`)."""
    return read_raw(LAYOUT, root, sheet=sheet, labels=labels, fixes=fixes)
