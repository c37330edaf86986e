"""CAS(ME)^3 part A frames (Li et al., TPAMI 2022; 30 fps, 1280x720 colour and depth; 100 subjects).

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

from epir.preprocess.datasets import RawLayout, read_raw, register_raw


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
    :func:`epir.preprocess.datasets.locate_clips`)."""
    return read_raw(LAYOUT, root, sheet=sheet, labels=labels, fixes=fixes)
