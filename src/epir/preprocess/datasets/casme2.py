"""CASME II frames (Yan et al., 2014; 200 fps, 640x480; 26 subjects).

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

import pandas as pd

from epir.preprocess.datasets import RawLayout, read_raw, register_raw


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
