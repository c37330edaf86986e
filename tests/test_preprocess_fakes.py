"""The fake raw datasets of tests/fakes_preprocess.py: dlib finds the drawn faces; the sheets parse."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from epir.data.synthetic import render_face
from epir.preprocess.face import FaceAligner, five_points
from fakes_preprocess import GOOD_SEEDS, face_style, make_casme2, make_casme3, make_samm, make_smic


def test_dlib_finds_the_drawn_faces() -> None:
    """A real dlib detection (no injected detector) on every drawn subject the other tests use."""
    aligner = FaceAligner()
    for seed in sorted(set(GOOD_SEEDS) | {17}):
        style = face_style(seed)
        face = aligner.align(render_face(style))
        # the eye centres found by dlib's 68 landmarks are where the eyes were drawn (mapped into the crop)
        drawn = np.array([[style.center[0] - style.eye_dx, style.center[1] + style.eye_y],
                          [style.center[0] + style.eye_dx, style.center[1] + style.eye_y]])
        found = five_points(face.landmarks)[:2]
        m = face.matrix
        expected = drawn @ m[:, :2].T + m[:, 2]
        assert np.abs(found - expected).max() < 3.0, (seed, found, expected)
        assert face.image.shape == (128, 128, 3) and face.image.dtype == np.uint8


def test_fake_sheets_parse_with_the_real_readers(tmp_path: Path) -> None:
    from epir.annotations import read_annotations

    make_casme2(tmp_path / "c")
    make_samm(tmp_path / "s")
    make_smic(tmp_path / "m")
    make_casme3(tmp_path / "3")
    assert len(read_annotations("casme2", tmp_path / "c" / "CASME2-coding-20140508.xlsx", labels="composite")) == 3
    samm = read_annotations("samm", tmp_path / "s" / "SAMM_Micro_FACS_Codes_v2.xlsx", labels="composite")
    assert samm["subject"].tolist() == ["006", "006", "007"]
    smic = read_annotations("smic", tmp_path / "m" / "smic_apex.xlsx")
    assert smic["clip"].tolist() == ["s01_ne_01", "s01_po_01", "s02_sur_01"]
    casme3 = read_annotations("casme3", tmp_path / "3" / "CAS(ME)3_part_A_ME_label_JpgIndex_v2.xlsx")
    assert casme3["clip"].tolist() == ["a_3", "a_10", "b_1"]
