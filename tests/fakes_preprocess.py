"""Fake raw datasets for the preprocessing tests, in each dataset's real folder layout, with drawn faces.

The frames are faces drawn by :func:`epir.data.synthetic.render_face` (224x224, a subject per seed) that
dlib's HOG detector finds (checked below for every seed used), with a known motion: an action unit that
ramps from 0 at the onset to its peak at the apex and back down. Label sheets are written as .xlsx in each
dataset's own columns, so the real readers of :mod:`epir.annotations` parse them.

Test modules import these builders from here (``tests/fakes*.py`` hold every fake builder; test modules
import from no other test module).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from epir.data.synthetic import random_subject, render_face

#: Frame size of the drawn faces.
FRAME_SIZE = 224
#: Subject seeds whose drawn face dlib's HOG detector finds at FRAME_SIZE (see test_dlib_finds_the_drawn_faces).
GOOD_SEEDS = (4, 5, 7, 10, 13, 15)


def face_style(seed: int, size: int = FRAME_SIZE):
    """The drawn subject of ``seed``."""
    return random_subject(np.random.default_rng(seed), size=size)


def clip_frames(seed: int, n: int, apex: int, *, au: str = "AU12", peak: float = 1.5,
                shift: tuple[float, float] = (0.0, 0.0)) -> list[np.ndarray]:
    """``n`` frames: ``au`` (and a head ``shift``) ramp from 0 at frame 0 to ``peak`` at ``apex``, then back."""
    style = face_style(seed)
    frames = []
    for i in range(n):
        t = i / apex if i <= apex else max(0.0, 1.0 - (i - apex) / max(1, n - 1 - apex))
        frames.append(render_face(style, {au: peak * t}, shift=(shift[0] * t, shift[1] * t)))
    return frames


def write_frames(folder: Path, frames: list[np.ndarray], names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for frame, name in zip(frames, names):
        path = folder / name
        assert cv2.imwrite(str(path), frame), path
        paths.append(path)
    return paths


def write_sheet(path: Path, header: list[str], rows: list[list], *, preamble: int = 0,
                worksheet: str = "Sheet1") -> Path:
    """An .xlsx label sheet: ``preamble`` rows of notes, the header row, then ``rows``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = [[f"note {i}"] + [""] * (len(header) - 1) for i in range(preamble)] + [header] + rows
    pd.DataFrame(table).to_excel(path, sheet_name=worksheet, header=False, index=False)
    return path


# Each clip: (subject as the sheet writes it, clip, onset, apex, offset, emotion, seed).

CASME2_CLIPS = [("01", "EP02_01f", 46, 49, 51, "happiness", 4), ("01", "EP03_02f", 10, 12, 14, "disgust", 4),
                ("02", "EP01_11f", 100, 102, 104, "surprise", 5)]


def make_casme2(root: Path, clips=CASME2_CLIPS, *, cropped: bool = False) -> Path:
    """``root/CASME2_RAW_selected/sub01/EP02_01f/img46.jpg`` (or ``root/Cropped/.../reg_img46.jpg``) + the sheet."""
    top = root / ("Cropped" if cropped else "CASME2_RAW_selected")
    for sub, clip, onset, apex, offset, _, seed in clips:
        frames = clip_frames(seed, offset - onset + 1, apex - onset)
        prefix = "reg_img" if cropped else "img"
        write_frames(top / f"sub{sub}" / clip, frames, [f"{prefix}{n}.jpg" for n in range(onset, offset + 1)])
    write_sheet(root / "CASME2-coding-20140508.xlsx",
                ["Subject", "Filename", "", "OnsetFrame", "ApexFrame", "OffsetFrame", "", "Action Units",
                 "Estimated Emotion"],
                [[sub, clip, "", on, ap, off, "", "12", emo] for sub, clip, on, ap, off, emo, _ in clips])
    return root


SAMM_CLIPS = [("006", "006_1_2", 5562, 5565, 5567, "anger", 7), ("006", "006_1_3", 3912, 3914, 3916, "happiness", 7),
              ("007", "007_6_1", 200, 203, 205, "surprise", 10)]


def make_samm(root: Path, clips=SAMM_CLIPS) -> Path:
    """``root/SAMM/006/006_1_2/006_05562.jpg`` + ``SAMM_Micro_FACS_Codes_v2.xlsx`` (notes above the table)."""
    for sub, clip, onset, apex, offset, _, seed in clips:
        frames = clip_frames(seed, offset - onset + 1, apex - onset, au="AU4")
        write_frames(root / "SAMM" / sub / clip, frames, [f"{sub}_{n:05d}.jpg" for n in range(onset, offset + 1)])
    write_sheet(root / "SAMM_Micro_FACS_Codes_v2.xlsx",
                ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame", "Duration",
                 "Micro", "Action Units", "Estimated Emotion", "Objective Classes", "Notes"],
                [[sub, clip, 1, on, ap, off, off - on + 1, "Micro", "4", emo.capitalize(), 1, ""]
                 for sub, clip, on, ap, off, emo, _ in clips], preamble=3)
    return root


SMIC_CLIPS = [("1", "s1_ne_01", 559740, 559743, 559746, "0", 13), ("1", "s1_po_01", 701843, 701845, 701847, "1", 13),
              ("2", "s2_sur_01", 1000, 1002, 1005, "2", 15)]
_SMIC_DIR = {"ne": "negative", "po": "positive", "sur": "surprise"}


def make_smic(root: Path, clips=SMIC_CLIPS, *, renumber: int = 0, apex_sheet: bool = True) -> Path:
    """``root/SMIC/HS/s1/micro/negative/s1_ne_01/image559740.bmp`` + ``smic_apex.xlsx`` (or the HS-E sheet).

    ``renumber`` shifts the frame numbers of the files away from the sheet's (as in the original SMIC-HS release).
    """
    for sub, clip, onset, apex, offset, _, seed in clips:
        frames = clip_frames(seed, offset - onset + 1, apex - onset, au="AU26")
        folder = root / "SMIC" / "HS" / f"s{sub}" / "micro" / _SMIC_DIR[clip.split("_")[1]] / clip
        write_frames(folder, frames, [f"image{n + renumber}.bmp" for n in range(onset, offset + 1)])
    if apex_sheet:
        write_sheet(root / "smic_apex.xlsx",
                    ["data", "subject", "clip", "label", "onset_frame", "apex_frame", "offset_frame"],
                    [["smic", int(sub), clip, int(lab), on, ap, off] for sub, clip, on, ap, off, lab, _ in clips])
    else:
        names = {"0": "negative", "1": "positive", "2": "surprise"}
        write_sheet(root / "SMIC-HS-E_annotation.xlsx",
                    ["Subject", "Filename", "", "OnsetF", "OffsetF", "Emotion"],
                    [[int(sub), clip, "", on, off, names[lab]] for sub, clip, on, _, off, lab, _ in clips],
                    worksheet="HS")
    return root


#: CAS(ME)^3: (subject, video, onset, apex, offset, emotion, seed); two clips share video a of spNO.1.
CASME3_CLIPS = [("spNO.1", "a", 3, 5, 7, "happiness", 17), ("spNO.1", "a", 10, 12, 14, "surprise", 17),
                ("spNO.2", "b", 1, 3, 4, "disgust", 5)]


def make_casme3(root: Path, clips=CASME3_CLIPS, *, subject_case: str = "spNO") -> Path:
    """``root/part_A/data/part_A/spNO.1/a/color/0.jpg`` (whole task videos) + the JpgIndex sheet."""
    base = root / "part_A" / "data" / "part_A"
    videos: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    for sub, video, onset, apex, offset, _, seed in clips:
        frames = videos.setdefault((sub, video), {})
        style = face_style(seed)
        last = max(offset + 2, max(frames, default=0))
        for n in range(0, last + 1):
            frames.setdefault(n, render_face(style))
        for n, frame in zip(range(onset, offset + 1), clip_frames(seed, offset - onset + 1, apex - onset, au="AU1")):
            frames[n] = frame
    for (sub, video), frames in videos.items():
        folder = base / sub.replace("spNO", subject_case) / video / "color"
        write_frames(folder, [frames[n] for n in sorted(frames)], [f"{n}.jpg" for n in sorted(frames)])
    write_sheet(root / "CAS(ME)3_part_A_ME_label_JpgIndex_v2.xlsx",
                ["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class", "emotion"],
                [[sub, video, str(on), str(ap), str(off), "12", "1", emo] for sub, video, on, ap, off, emo, _ in clips],
                worksheet="label")
    return root


MAKERS = {"casme2": make_casme2, "samm": make_samm, "smic": make_smic, "casme3": make_casme3}


def make_composite(root: Path) -> Path:
    """CASME II, SAMM and SMIC-HS side by side under ``root`` (each in its own folder with its sheet)."""
    make_casme2(root / "CASME2")
    make_samm(root / "SAMM_data")
    make_smic(root / "SMIC_data")
    return root


# ------------------------------------------------------------------------------------- the fakes themselves


def write_avi(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    """Write ``frames`` (BGR) as an MJPG .avi at ``fps``."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path
