"""Face detection, 68 facial landmarks, alignment on the eye line and a square crop, offline with dlib.

Models: dlib's HOG frontal face detector (built into dlib) and the 68-point shape predictor
``shape_predictor_68_face_landmarks.dat`` shipped in the ``face-recognition-models`` package. The package is
located with ``importlib.util.find_spec`` and never imported (its ``__init__`` imports ``pkg_resources``,
which recent setuptools no longer ship). Both models are loaded lazily, once per process.

How a frame is aligned (:meth:`FaceAligner.align`):

1. **Detect** faces on the RGB frame (dlib's HOG uses the strongest gradient of the three channels, which
   finds more faces than the gray image), downscaled so that its longer side is at most ``detect_size``
   pixels; when nothing is found the detector runs again on the frame upsampled once (faces down to ~40
   px instead of ~80 px; only under 800 px, where that costs under ~0.2 s). The **largest** face is
   taken. No face: :class:`NoFaceError`.
2. **Landmarks**: the 68 points (iBUG 300-W numbering) predicted at full resolution in that face box.
3. **Alignment**: the frame is rotated about the midpoint of the eyes (the means of points 36-41 and 42-47)
   so that the eye line is horizontal.
4. **Crop**: the bounding box of the 68 rotated landmarks (brows to chin, jaw side to jaw side) is made a
   square of side ``max(width, height) * (1 + 2 * margin)`` (``margin`` defaults to 0.2), centred
   horizontally on the box; vertically :data:`FOREHEAD_SHARE` (3/4) of the extra height goes above the
   brows and the rest below the chin, so the forehead (where brow raising moves) is in the crop as in the
   datasets' own face crops (on a 28x28 map the eyes come at about a third of the height, the mouth at
   about two thirds). The square is resized to ``size x size`` (area interpolation when shrinking); parts
   outside the frame are filled by replicating the border.

One affine ``matrix`` (2x3, frame to crop) does 3 and 4. :meth:`FaceAligner.align_pair` computes it from the
onset frame only and applies the same matrix to the apex frame, so that nothing but the face's own motion
(and the head motion between the two frames, which is real) reaches the optical flow; the apex landmarks
are predicted in the onset's face box (no second detection).

Tests and callers may inject ``detector`` / ``predictor`` callables instead of dlib (see :class:`FaceAligner`).
"""
from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from epir.errors import ConfigError, FaceModelError, NoFaceError
from epir.preprocess.flow import to_gray

#: File name of the 68-point landmark model inside ``face_recognition_models/models/``.
PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
#: Landmark indices (0-based, iBUG 68) of the eye on the image's left (the subject's right eye) and right.
LEFT_EYE = slice(36, 42)
RIGHT_EYE = slice(42, 48)
#: Share of the crop's extra height (beyond the landmarks' brow-to-chin box) placed above the brows.
FOREHEAD_SHARE = 0.75
#: The five points of HTNet's mosaic, as indices or index ranges of the 68: left eye, right eye, nose tip,
#: left mouth corner, right mouth corner (left/right as seen in the image).
FIVE_POINTS = (LEFT_EYE, RIGHT_EYE, 30, 48, 54)

#: ``detector(rgb) -> [(left, top, right, bottom), ...]`` face boxes in pixels of the uint8 RGB image.
Detector = Callable[[np.ndarray], "list[tuple[float, float, float, float]]"]
#: ``predictor(gray, box) -> (68, 2)`` landmark (x, y) coordinates in pixels of ``gray``.
Predictor = Callable[[np.ndarray, "tuple[float, float, float, float]"], np.ndarray]


@dataclass
class AlignedFace:
    """A face aligned on the eye line and cropped.

    Attributes:
        image: the crop, BGR uint8, shape (size, size, 3).
        landmarks: the 68 landmarks (x, y) in crop pixels, float32, shape (68, 2).
        matrix: the affine transform from frame to crop pixels, float64, shape (2, 3).
        box: the detected face box (left, top, right, bottom) in frame pixels.
    """

    image: np.ndarray
    landmarks: np.ndarray
    matrix: np.ndarray
    box: tuple[float, float, float, float]


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """HTNet's five points (left eye, right eye, nose tip, left and right mouth corner) from 68 landmarks.

    Args:
        landmarks: shape (68, 2), (x, y).

    Returns:
        float32 array of shape (5, 2); the eyes are the means of their six points.
    """
    lm = np.asarray(landmarks, dtype=np.float32)
    return np.stack([lm[i].mean(axis=0) if isinstance(i, slice) else lm[i] for i in FIVE_POINTS]).astype(np.float32)


# ---------------------------------------------------------------------------------------------- dlib models


def model_dir() -> Path:
    """The ``models`` folder of the installed ``face-recognition-models`` package (found, not imported).

    Raises:
        FaceModelError: the package is not installed.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceModelError(
            "The face landmark model is missing: install the package 'face-recognition-models' "
            "(pip install face-recognition-models), which ships shape_predictor_68_face_landmarks.dat, "
            "or set the preprocessing setting align=false (--no-align) for frames that are already cropped faces."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@functools.lru_cache(maxsize=1)
def _dlib_models() -> tuple[Any, Any]:
    try:
        import dlib  # noqa: PLC0415 (heavy, optional at import time)
    except ImportError as e:
        raise FaceModelError(
            "dlib is not installed: install the package 'dlib-bin' (pip install dlib-bin; prebuilt wheels, no "
            "compiler needed), or set align=false (--no-align) for frames that are already cropped faces."
        ) from e
    path = model_dir() / PREDICTOR_FILE
    if not path.is_file():
        raise FaceModelError(f"{path} does not exist: reinstall the package 'face-recognition-models' "
                             "(pip install --force-reinstall face-recognition-models).")
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(path))


def dlib_detector(image: np.ndarray, upsample: int | None = None) -> list[tuple[float, float, float, float]]:
    """Face boxes found by dlib's HOG detector on a uint8 RGB (or gray) image.

    ``upsample`` times upsampled; None: not upsampled, and once upsampled if that finds nothing and the
    image's longer side is under 800 px.
    """
    detector, _ = _dlib_models()
    levels = (0, 1) if upsample is None and max(image.shape[:2]) < 800 else (upsample or 0,)
    for level in levels:
        found = detector(np.ascontiguousarray(image), level)
        if len(found):
            break
    return [(r.left(), r.top(), r.right(), r.bottom()) for r in found]


def dlib_predictor(gray: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The 68 landmarks (x, y) that dlib's shape predictor finds in ``box`` of a uint8 gray image."""
    import dlib  # noqa: PLC0415  (native dependency, loaded when a face is first detected)

    _, predictor = _dlib_models()
    left, top, right, bottom = (int(round(v)) for v in box)
    shape = predictor(gray, dlib.rectangle(left, top, right, bottom))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


# ---------------------------------------------------------------------------------------------- alignment


def _rgb(frame: np.ndarray) -> np.ndarray:
    a = np.asarray(frame)
    if a.ndim == 3 and a.shape[2] in (3, 4) and a.dtype == np.uint8:
        return cv2.cvtColor(a, cv2.COLOR_BGR2RGB if a.shape[2] == 3 else cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(to_gray(a), cv2.COLOR_GRAY2RGB)


def _largest(boxes: list[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
    return max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine ``matrix`` to (N, 2) points; returns float32 (N, 2)."""
    p = np.asarray(points, dtype=np.float64)
    return (p @ np.asarray(matrix, dtype=np.float64)[:, :2].T + matrix[:, 2]).astype(np.float32)


class FaceAligner:
    """Detects the largest face, its 68 landmarks, and aligns and crops frames (see the module docstring).

    Args:
        margin: fraction of the face's size (the landmarks' bounding box) added on every side of the square
            crop; 0.2 keeps the forehead and the jaw line.
        size: side of the square crop in pixels: the working resolution of the optical flow.
        detect_size: frames are downscaled for detection so that their longer side is at most this.
        detector: ``detector(rgb) -> [(left, top, right, bottom), ...]`` instead of dlib's HOG detector; it
            gets the frame as uint8 RGB, downscaled to ``detect_size`` (boxes in those pixels).
        predictor: ``predictor(gray, box) -> (68, 2) array`` instead of dlib's 68-point shape predictor.
            With ``jobs > 1`` both must be picklable (module-level functions).

    Raises:
        ConfigError: a margin outside [0, 2], a size under 16 or a detect_size under 64.
    """

    def __init__(self, *, margin: float = 0.2, size: int = 128, detect_size: int = 640,
                 detector: Detector | None = None, predictor: Predictor | None = None) -> None:
        if not (0.0 <= float(margin) <= 2.0):
            raise ConfigError("Face crop margin must be between 0 and 2 (a fraction of the face size), got "
                              f"{margin!r}.")
        if int(size) < 16:
            raise ConfigError(f"Face crop size must be at least 16 pixels, got {size!r}.")
        if int(detect_size) < 64:
            raise ConfigError(f"detect_size must be at least 64 pixels, got {detect_size!r}.")
        self.margin = float(margin)
        self.size = int(size)
        self.detect_size = int(detect_size)
        self.detector = detector
        self.predictor = predictor

    def __repr__(self) -> str:
        return f"FaceAligner(margin={self.margin}, size={self.size})"

    # -- detection and landmarks

    def detect(self, frame: np.ndarray) -> tuple[tuple[float, float, float, float], np.ndarray]:
        """The largest face's box (left, top, right, bottom) and its 68 landmarks, in frame pixels.

        Raises:
            NoFaceError: no face was found.
        """
        gray = to_gray(frame)
        rgb = _rgb(frame)
        h, w = gray.shape
        scale = min(1.0, self.detect_size / max(h, w))
        small = rgb if scale == 1.0 else cv2.resize(rgb, (round(w * scale), round(h * scale)),
                                                    interpolation=cv2.INTER_AREA)
        boxes = list((self.detector or dlib_detector)(small))
        if not boxes:
            which = ("the injected detector" if self.detector is not None else
                     f"dlib's HOG detector finds frontal faces of at least ~{int(40 / scale)} px")
            raise NoFaceError(f"No face found in the {w}x{h} frame ({which}); check the frame, or leave the clip out.")
        box = tuple(float(v) / scale for v in _largest(boxes))
        predictor = self.predictor or dlib_predictor
        landmarks = np.asarray(predictor(gray, box), dtype=np.float32)
        if landmarks.shape != (68, 2):
            raise ConfigError(f"The landmark predictor returned an array of shape {landmarks.shape}; expected the "
                              "68 (x, y) points, shape (68, 2).")
        return box, landmarks

    def matrix(self, landmarks: np.ndarray) -> np.ndarray:
        """The 2x3 affine transform from frame to crop for a face's 68 landmarks (frame pixels)."""
        lm = np.asarray(landmarks, dtype=np.float64)
        left, right = lm[LEFT_EYE].mean(axis=0), lm[RIGHT_EYE].mean(axis=0)
        angle = math.atan2(right[1] - left[1], right[0] - left[0])
        c, s = math.cos(-angle), math.sin(-angle)
        rot = np.array([[c, -s], [s, c]])  # rotates the eye line onto the x axis
        pts = lm @ rot.T
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        side = float(max(hi - lo)) * (1.0 + 2.0 * self.margin)
        top = lo[1] - FOREHEAD_SHARE * (side - (hi[1] - lo[1]))
        centre = np.array([(lo[0] + hi[0]) / 2.0, top + side / 2.0])
        k = self.size / side
        # crop = k * (rot @ p - centre) + (size - 1) / 2, in OpenCV's pixel-centre coordinates
        return np.hstack([k * rot, ((self.size - 1) / 2.0 - k * centre)[:, None]])

    # -- warping

    def warp(self, frame: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """Apply a frame-to-crop ``matrix`` to ``frame``: the (size, size) crop (BGR uint8, or gray if gray).

        Shrinking uses area interpolation (warp at full scale, then ``cv2.INTER_AREA``) so that fine skin
        texture, which the optical flow follows, does not alias.
        """
        m = np.asarray(matrix, dtype=np.float64)
        k = math.hypot(m[0, 0], m[1, 0])
        if k >= 0.999:
            return cv2.warpAffine(frame, m, (self.size, self.size), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)
        big = max(self.size, int(math.ceil(self.size / k)))
        f = big / self.size  # exact factor of the resize below
        # full-scale crop: crop pixel = (q + 0.5) / f - 0.5 with q the full-scale pixel (cv2.resize's mapping)
        m_big = m * f
        m_big[:, 2] += 0.5 * (f - 1.0)
        full = cv2.warpAffine(frame, m_big, (big, big), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return cv2.resize(full, (self.size, self.size), interpolation=cv2.INTER_AREA)

    # -- the public steps

    def align(self, frame: np.ndarray) -> AlignedFace:
        """Detect, align and crop the largest face of ``frame`` (BGR or gray uint8).

        Raises:
            NoFaceError: no face was found.
            FaceModelError: dlib or its model file is not installed (when no detector/predictor is injected).
        """
        box, landmarks = self.detect(frame)
        m = self.matrix(landmarks)
        return AlignedFace(image=self.warp(frame, m), landmarks=transform_points(landmarks, m), matrix=m, box=box)

    def follow(self, frame: np.ndarray, face: AlignedFace) -> AlignedFace:
        """Another frame of the same clip under ``face``'s transform (no detection).

        The landmarks are predicted in ``face``'s box and mapped with its matrix, so they show how the face
        moved since ``face``'s frame.
        """
        predictor = self.predictor or dlib_predictor
        landmarks = np.asarray(predictor(to_gray(frame), face.box), dtype=np.float32)
        return AlignedFace(image=self.warp(frame, face.matrix), landmarks=transform_points(landmarks, face.matrix),
                           matrix=face.matrix, box=face.box)

    def align_pair(self, onset: np.ndarray, apex: np.ndarray) -> tuple[AlignedFace, AlignedFace]:
        """Align the onset and apex frames with the SAME transform, computed from the onset frame.

        The apex landmarks are predicted in the onset's face box (no second detection), then mapped with the
        same matrix (:meth:`follow`).

        Raises:
            NoFaceError: no face in the onset frame.
        """
        first = self.align(onset)
        return first, self.follow(apex, first)

__all__ = [
    "AlignedFace", "FIVE_POINTS", "FOREHEAD_SHARE", "FaceAligner", "FaceModelError", "NoFaceError", "PREDICTOR_FILE",
    "dlib_detector", "dlib_predictor", "five_points", "model_dir", "transform_points",
]
