"""Apex estimation from the frames, for datasets (SMIC) and recordings that give no apex.

:func:`estimate_apex` scores every frame after the onset against the onset frame and returns the frame of
the highest score. Methods (:data:`APEX_METHODS`):

``max_flow`` (default)  the mean magnitude of the dense optical flow from the onset frame (OpenCV DIS,
    preset MEDIUM, on gray frames downscaled to at most 128 px), after subtracting the median flow of the
    frame so that a global head translation does not count. The peak is found on the scores smoothed over
    time (3-frame moving average: a single noisy frame does not win), then refined to the highest raw score
    within one frame of it. About 2 ms a frame.
``max_diff``  the mean absolute gray-level difference to the onset frame (after a light Gaussian blur,
    sigma 1 px), peak found the same way: no flow, cheaper, but sensitive to lighting flicker and blinks.
``middle``  the frame halfway between the onset and the last frame given: the convention of some SMIC
    baselines (e.g. tvaranka/meb), which is right only for a symmetric expression.

Give the frames already aligned (the pipeline warps every candidate frame with the onset's face
transform), from the onset to the offset or the clip's end: everything after ``onset`` is a candidate.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from epir.errors import ClipError, ConfigError, did_you_mean
from epir.preprocess.flow import compute_flow, to_gray

#: Longer side (pixels) to which frames are downscaled before scoring.
SCORE_SIZE = 128


def _small(frame: np.ndarray) -> np.ndarray:
    g = to_gray(frame)
    h, w = g.shape
    scale = min(1.0, SCORE_SIZE / max(h, w))
    return g if scale == 1.0 else cv2.resize(g, (max(1, round(w * scale)), max(1, round(h * scale))),
                                             interpolation=cv2.INTER_AREA)


def _flow_score(ref: np.ndarray, frame: np.ndarray) -> float:
    flow = compute_flow(ref, frame, "dis")
    residual = flow - np.median(flow.reshape(-1, 2), axis=0)
    return float(np.linalg.norm(residual, axis=2).mean())


def _diff_score(ref: np.ndarray, frame: np.ndarray) -> float:
    a = cv2.GaussianBlur(ref.astype(np.float32), (0, 0), 1.0)
    b = cv2.GaussianBlur(frame.astype(np.float32), (0, 0), 1.0)
    return float(np.abs(b - a).mean())


_SCORES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"max_flow": _flow_score, "max_diff": _diff_score}
#: Apex estimation methods understood by :func:`estimate_apex`.
APEX_METHODS = ("max_flow", "max_diff", "middle")


def check_method(method: str) -> str:
    """Return ``method`` if it is one of :data:`APEX_METHODS`; raise a ConfigError with the choices otherwise."""
    if method not in APEX_METHODS:
        raise ConfigError(f"Unknown apex estimation method {method!r}.{did_you_mean(method, APEX_METHODS)} "
                          f"Valid methods: {', '.join(APEX_METHODS)}.")
    return method


def motion_curve(frames: Sequence[np.ndarray], onset: int = 0, *, method: str = "max_flow") -> np.ndarray:
    """The raw score of every frame after ``onset`` against the onset frame (see the module docstring).

    Args:
        frames: uint8 gray or BGR frames of one size.
        onset: 0-based index of the onset frame.
        method: ``max_flow`` or ``max_diff``.

    Returns:
        float64 array of shape (len(frames) - onset - 1,): entry i scores frame ``onset + 1 + i``.
    """
    if method not in _SCORES:
        raise ConfigError(f"motion_curve takes method 'max_flow' or 'max_diff', got {method!r}.")
    ref = _small(frames[onset])
    return np.array([_SCORES[method](ref, _small(frames[i])) for i in range(onset + 1, len(frames))])


def _peak(raw: np.ndarray) -> int:
    """Index of the peak: the maximum of the 3-frame moving average, refined to the raw maximum next to it."""
    if len(raw) < 3:
        return int(np.argmax(raw))
    smooth = np.convolve(np.concatenate([raw[:1], raw, raw[-1:]]), np.ones(3) / 3.0, mode="valid")
    i = int(np.argmax(smooth))
    lo = max(0, i - 1)
    return lo + int(np.argmax(raw[lo:i + 2]))


def estimate_apex(frames: Sequence[np.ndarray], onset: int = 0, *, method: str = "max_flow") -> int:
    """Estimate the apex: the frame after ``onset`` where the face has moved most from the onset frame.

    Args:
        frames: the clip's frames (uint8 gray or BGR, one size), ideally face crops aligned with the onset's
            transform; every frame after ``onset`` is a candidate.
        onset: 0-based index of the onset frame.
        method: ``max_flow`` (default), ``max_diff`` or ``middle`` (see the module docstring).

    Returns:
        0-based index into ``frames``, greater than ``onset``.

    Raises:
        ConfigError: unknown method.
        ClipError: ``onset`` is not a frame of the clip, or no frame follows it.
    """
    check_method(method)
    n = len(frames)
    if not 0 <= int(onset) < n:
        raise ClipError(f"Onset index {onset} is beyond the clip ({n} frames, indices 0-{n - 1}).")
    if onset >= n - 1:
        raise ClipError(f"No frame follows the onset (index {onset} of a {n}-frame clip): cannot estimate an apex; "
                        "give the frames up to the offset.")
    if method == "middle":
        return int(onset) + max(1, (n - 1 - int(onset)) // 2)
    return int(onset) + 1 + _peak(motion_curve(frames, int(onset), method=method))


__all__ = ["APEX_METHODS", "SCORE_SIZE", "check_method", "estimate_apex", "motion_curve"]
