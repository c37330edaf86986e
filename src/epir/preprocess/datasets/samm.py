"""SAMM frames (Davison et al., 2018; 200 fps, 2040x1088 gray; 32 subjects, 29 with micro-expressions).

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

import pandas as pd

from epir.preprocess.datasets import RawLayout, read_raw, register_raw


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
