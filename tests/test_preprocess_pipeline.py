"""The clip pipeline on drawn faces with a known motion: flow direction and magnitude, strain, apex, errors."""
from __future__ import annotations

import math
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from epir.data.synthetic import displacement, render_face
from epir.errors import ConfigError
from epir.preprocess import (
    ClipError,
    FaceAligner,
    NoFaceError,
    PreprocessSettings,
    estimate_apex,
    flow_to_map,
    process_clip,
    process_video,
)
from epir.preprocess import face as face_module
from epir.preprocess.face import FaceModelError
from fakes_preprocess import clip_frames, face_style, write_avi

SEED = 4
CENTRE = slice(32, 96)  # the middle of the 128x128 face crop


@pytest.fixture(scope="module")
def style():
    return face_style(SEED)


@pytest.fixture(scope="module")
def onset(style) -> np.ndarray:
    return render_face(style)


def expected_in_crop(matrix: np.ndarray, style, au: dict[str, float]) -> np.ndarray:
    """The true displacement of ``au`` at every crop pixel, in crop pixels: (128, 128, 2)."""
    inv = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    ys, xs = np.mgrid[0:128, 0:128].astype(np.float64)
    px = (inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]).astype(np.float32)
    py = (inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]).astype(np.float32)
    dx, dy = displacement(style, au, px, py)
    return np.stack([dx, dy], axis=-1) @ matrix[:, :2].T


def angle_between(a: np.ndarray, b: np.ndarray) -> float:
    d = math.degrees(math.atan2(a[1], a[0]) - math.atan2(b[1], b[0]))
    return abs((d + 180) % 360 - 180)


@pytest.mark.parametrize("method", ["tvl1", "farneback", "dis"])
def test_translation_gives_its_flow_and_no_strain(method: str, style, onset) -> None:
    shift = np.array([1.5, -1.0])
    apex = render_face(style, shift=tuple(shift))
    r = process_clip([onset, apex], 0, 1, PreprocessSettings(flow_method=method))
    expected = r.onset_face.matrix[:, :2] @ shift  # the head shift seen in the crop (scale ~0.55)
    got = r.flow[CENTRE, CENTRE].reshape(-1, 2).mean(axis=0)
    assert angle_between(got, expected) < 6.0
    assert abs(np.linalg.norm(got) / np.linalg.norm(expected) - 1.0) < 0.12
    # a pure translation has (near) zero optical strain
    assert float(r.strain[CENTRE, CENTRE].mean()) < 0.03
    assert r.map.shape == (3, 28, 28) and r.map.dtype == np.uint8
    assert r.flow.shape == (128, 128, 2) and r.flow.dtype == np.float32 and r.strain.shape == (128, 128)
    assert set(r.timings) == {"face", "flow", "map"} and not r.apex_estimated


def test_local_motion_direction_magnitude_and_strain(style, onset) -> None:
    au = {"AU12": 2.0}  # lip corners pulled out and up
    r = process_clip([onset, render_face(style, au)], 0, 1)  # TV-L1
    truth = expected_in_crop(r.onset_face.matrix, style, au)
    mag = np.linalg.norm(truth, axis=2)
    moving = mag > 0.5 * mag.max()
    xs = np.mgrid[0:128, 0:128][1]
    for side in (moving & (xs < 64), moving & (xs >= 64)):
        got, want = r.flow[side].mean(axis=0), truth[side].mean(axis=0)
        assert angle_between(got, want) < 15.0
        assert 0.5 < np.linalg.norm(got) / np.linalg.norm(want) < 1.2  # TV-L1 smooths small local motions
    still = mag < 0.01 * mag.max()
    assert np.abs(r.flow[still & (xs > 20) & (xs < 108)]).mean() < 0.15
    assert r.strain[moving].mean() > 5 * 0.03  # local motion strains the skin; translation does not


def test_map_is_the_quantised_flow_map(style, onset) -> None:
    r = process_clip([onset, render_face(style, {"AU1": 1.5})], 0, 1, PreprocessSettings(flow_method="dis"))
    want = np.clip(np.rint(flow_to_map(r.flow, size=28, strain=r.strain)), 0, 255).astype(np.uint8)
    assert np.array_equal(r.map, want) and r.map.min() == 0 and r.map.max() == 255


def test_apex_landmarks_move_with_the_face(style, onset) -> None:
    r = process_clip([onset, render_face(style, shift=(4.0, 0.0))], 0, 1, PreprocessSettings(flow_method="dis"))
    moved = (r.apex_face.landmarks - r.onset_face.landmarks).mean(axis=0)
    assert np.array_equal(r.apex_face.matrix, r.onset_face.matrix)  # the same transform for both frames
    assert abs(moved[0] - 4.0 * r.onset_face.matrix[0, 0]) < 1.0 and abs(moved[1]) < 1.0


# ---------------------------------------------------------------------------------------------------- apex


@pytest.mark.parametrize("method", ["max_flow", "max_diff"])
def test_apex_estimation_finds_the_peak_motion_frame(method: str) -> None:
    frames = clip_frames(SEED, 9, 5)
    aligner = FaceAligner()
    face = aligner.align(frames[0])
    crops = [aligner.warp(f, face.matrix) for f in frames]
    assert estimate_apex(crops, 0, method=method) == 5
    assert estimate_apex(crops[2:], 0, method=method) == 3  # the onset need not be the first frame given
    assert estimate_apex(crops, 1, method=method) == 5


def test_apex_estimation_middle_and_errors() -> None:
    frames = [np.zeros((32, 32), np.uint8)] * 7
    assert estimate_apex(frames, 0, method="middle") == 3
    assert estimate_apex(frames, 4, method="middle") == 5
    with pytest.raises(ClipError, match="No frame follows the onset"):
        estimate_apex(frames, 6)
    with pytest.raises(ConfigError, match="Unknown apex estimation method 'max_flw'.*Did you mean 'max_flow'"):
        estimate_apex(frames, 0, method="max_flw")


def test_video_file_with_estimated_apex(tmp_path: Path) -> None:
    frames = clip_frames(SEED, 7, 4, peak=2.0)
    video = write_avi(tmp_path / "rec.avi", frames)
    r = process_video(video, settings=PreprocessSettings(flow_method="dis"))
    assert r.onset == 0 and r.apex == 4 and r.apex_estimated and "apex" in r.timings
    r = process_video(video, onset=1, apex=3, settings=PreprocessSettings(flow_method="dis"))
    assert (r.onset, r.apex, r.apex_estimated) == (1, 3, False)
    with pytest.raises(ClipError, match=r"onset \(index 5\) comes after the apex \(index 2\).*rec\.avi"):
        process_video(video, onset=5, apex=2)
    with pytest.raises(ClipError, match=r"apex index 9 is beyond the clip: it has 7 frames"):
        process_video(video, apex=9)


# ---------------------------------------------------------------------------------------------- bad inputs


def test_onset_after_apex_equal_and_beyond(onset) -> None:
    frames = [onset, onset, onset]
    with pytest.raises(ClipError, match="comes after the apex"):
        process_clip(frames, 2, 1)
    with pytest.raises(ClipError, match="apex equals the onset"):
        process_clip(frames, 1, 1)
    with pytest.raises(ClipError, match=r"apex index 3 is beyond the clip: it has 3 frames \(indices 0-2\)"):
        process_clip(frames, 0, 3)
    with pytest.raises(ClipError, match="must be a frame index"):
        process_clip(frames, 0, 1.5)


def test_no_face_with_the_real_detector() -> None:
    rng = np.random.default_rng(0)
    blank = np.full((240, 320, 3), 128, np.uint8) + rng.integers(0, 8, (240, 320, 3), dtype=np.uint8)
    with pytest.raises(NoFaceError, match="No face found in the 320x240 frame") as e:
        process_clip([blank, blank], 0, 1)
    assert e.value.kind == "no face" and isinstance(e.value, ClipError)


def test_injected_detector_and_predictor(style, onset) -> None:
    calls = []
    template = np.array(FaceAligner().detect(onset)[1])  # dlib's landmarks, reused as a fixed predictor output

    def detector(rgb):
        calls.append(rgb.shape)
        return [(10, 10, 50, 50), (30, 30, 200, 210)]  # the larger face is taken

    def predictor(gray, box):
        assert box == (30.0, 30.0, 200.0, 210.0)
        return template

    aligner = FaceAligner(detector=detector, predictor=predictor, margin=0.1, size=96)
    r = process_clip([onset, render_face(style, {"AU26": 1.0})], 0, 1, PreprocessSettings(flow_method="dis"),
                     aligner=aligner)
    assert len(calls) == 1 and calls[0] == (224, 224, 3)  # one detection (onset), on RGB
    assert r.flow.shape == (96, 96, 2) and r.onset_face.image.shape == (96, 96, 3)
    left, right = r.onset_face.landmarks[36:42].mean(axis=0), r.onset_face.landmarks[42:48].mean(axis=0)
    assert abs(left[1] - right[1]) < 1e-3  # aligned on the eye line
    with pytest.raises(NoFaceError):
        FaceAligner(detector=lambda rgb: []).align(onset)


def test_no_align_resizes_the_frames(onset) -> None:
    r = process_clip([onset, np.roll(onset, 2, axis=1)], 0, 1,
                     PreprocessSettings(flow_method="farneback", align=False, crop_size=64, size=14))
    assert r.onset_face is None and r.apex_face is None and r.map.shape == (3, 14, 14)
    assert r.flow.shape == (64, 64, 2) and r.flow[16:48, 16:48, 0].mean() > 0.3  # 2 px at 224 -> ~0.57 px


def test_missing_dlib_or_model_says_which_package(monkeypatch) -> None:
    monkeypatch.setattr(face_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FaceModelError, match="pip install face-recognition-models"):
        face_module.model_dir()
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib -> ImportError
    with pytest.raises(FaceModelError, match="pip install dlib-bin"):
        face_module._dlib_models.__wrapped__()


# ------------------------------------------------------------------------------------------------ settings


def test_settings_round_trip_and_key() -> None:
    s = PreprocessSettings(flow_method="dis", flow_params={"finest_scale": 1}, margin=0.3)
    d = s.to_dict()
    assert d["flow_method"] == "dis" and d["flow_params"] == {"finest_scale": 1} and d["size"] == 28
    again = PreprocessSettings.from_dict(d)
    assert again == s and again.key() == s.key() and len(s.key()) == 16
    assert pickle.loads(pickle.dumps(s)) == s  # sent to worker processes
    assert PreprocessSettings().key() == PreprocessSettings().key()
    assert PreprocessSettings(size=32).key() != PreprocessSettings().key()
    with pytest.raises(ConfigError, match="Unknown preprocessing setting 'flow_metod'.*Did you mean 'flow_method'"):
        PreprocessSettings.from_dict({**d, "flow_metod": "tvl1"})
    with pytest.raises(ConfigError, match="Unknown flow method 'tvl'"):
        PreprocessSettings(flow_method="tvl")
    with pytest.raises(ConfigError, match="size"):
        PreprocessSettings(size=0)
    with pytest.raises(ConfigError, match="apex estimation method"):
        PreprocessSettings(apex_method="peak")
    # flow parameters are checked when the settings are made, not on the first clip
    with pytest.raises(ConfigError, match="Unknown tvl1 flow parameter 'epsilonn'"):
        PreprocessSettings(flow_params={"epsilonn": 1})
    with pytest.raises(ConfigError, match=r"tvl1 flow parameters \{'nscales': -3\} are not valid.*nscales > 0"):
        PreprocessSettings(flow_params={"nscales": -3})
