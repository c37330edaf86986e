"""One clip's frames to the model input: face alignment, onset->apex optical flow, strain, the (3, 28, 28) map.

Illustration (needs the data it names; not run as a doctest)::

    from epir.preprocess import PreprocessSettings, process_video
    result = process_video("clip.avi")                  # onset = first frame, apex estimated
    result.map.shape, result.map.dtype                   # ((3, 28, 28), uint8): u, v, strain, 0-255

Steps of :func:`process_clip` (settings in :class:`PreprocessSettings`):

1. **face** - ``align=True``: :meth:`FaceAligner.align_pair` detects the largest face and its 68 landmarks
   on the onset frame, rotates the eye line horizontal and crops a square with ``margin`` around the
   landmarks, at ``crop_size`` x ``crop_size`` pixels (the working resolution); the apex frame gets the
   SAME transform. ``align=False``: both frames are only resized to ``crop_size`` x ``crop_size`` (for
   frames that are already face crops).
2. **flow** - dense optical flow onset -> apex on the crops: :func:`epir.preprocess.flow.compute_flow` with
   ``flow_method`` (``tvl1``, OpenCV's Dual TV-L1, default; ``farneback`` and ``dis`` are much faster) and
   ``flow_params``; then the optical strain (:func:`~epir.preprocess.flow.optical_strain`).
3. **map** - u, v and strain resized to ``size`` x ``size`` and each min-max normalised to 0-255
   (:func:`~epir.preprocess.flow.flow_to_map`), then rounded to uint8: exactly the MEGC2019 composite set's
   format (28x28 by default), the values that ``FlowDataset.x`` holds.

When no apex is given (:func:`process_video` with ``apex=None``), the candidate frames from the onset on
are warped with the onset's face transform and :func:`epir.preprocess.apex.estimate_apex` picks the apex
with ``apex_method``.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import cv2
import numpy as np

from epir.errors import ClipError, ConfigError, did_you_mean
from epir.preprocess.apex import APEX_METHODS, check_method, estimate_apex
from epir.preprocess.face import AlignedFace, FaceAligner
from epir.preprocess.flow import FLOW_METHODS, compute_flow, flow_to_map, optical_strain
from epir.preprocess.video import FrameSequence, list_frames, read_frames

#: Bumped when a change of this code changes its outputs, so that caches made by older code are recomputed.
PIPELINE_VERSION = 1
_PROBE = np.zeros((16, 16), np.uint8)  # a tiny frame to check flow parameters on


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything that decides a clip's output; its :meth:`key` names a cached result.

    Attributes:
        flow_method: ``tvl1`` (default), ``farneback`` or ``dis`` (see :func:`~epir.preprocess.flow.compute_flow`).
        flow_params: overrides of the flow method's parameters (e.g. ``{"epsilon": 0.05}`` for tvl1).
        size: height and width of the output map (28: the composite set's format).
        align: detect, align and crop the face (False: frames are already face crops, only resized).
        margin: fraction of the face's size added on each side of the crop (see :mod:`epir.preprocess.face`).
        crop_size: side of the face crop in pixels: the working resolution of the optical flow.
        apex_method: how an apex is estimated where none is given (``max_flow``, ``max_diff``, ``middle``;
            see :mod:`epir.preprocess.apex`).
        annotated_apex: datasets: use the label sheet's apex where it gives a usable one (after the onset);
            False estimates every apex with ``apex_method``.
    """

    flow_method: str = "tvl1"
    flow_params: Mapping[str, Any] = field(default_factory=dict)
    size: int = 28
    align: bool = True
    margin: float = 0.2
    crop_size: int = 128
    apex_method: str = "max_flow"
    annotated_apex: bool = True

    def __post_init__(self) -> None:
        if self.flow_method not in FLOW_METHODS:
            raise ConfigError(f"Unknown flow method {self.flow_method!r}.{did_you_mean(self.flow_method, FLOW_METHODS)}"
                              f" Valid methods: {', '.join(FLOW_METHODS)}.")
        if not isinstance(self.flow_params, Mapping):
            raise ConfigError(f"flow_params must be a mapping of parameter names to values, got {self.flow_params!r}.")
        object.__setattr__(self, "flow_params", MappingProxyType(dict(self.flow_params)))
        try:  # unknown names and values OpenCV refuses fail here, not on the first clip
            compute_flow(_PROBE, _PROBE, self.flow_method, params=self.flow_params)
        except (cv2.error, TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"{self.flow_method} flow parameters {dict(self.flow_params)} are not valid: "
                              f"{str(e).strip().splitlines()[-1]}") from None
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ConfigError(f"size (the output map's side) must be a positive integer, got {self.size!r}.")
        if self.size > 512:
            raise ConfigError(f"size (the output map's side) must be at most 512, got {self.size!r}.")
        if isinstance(self.crop_size, bool) or not isinstance(self.crop_size, int) or not 16 <= self.crop_size <= 1024:
            raise ConfigError(f"crop_size (the face crop's side in pixels) must be an integer from 16 to 1024, "
                              f"got {self.crop_size!r}.")
        if not isinstance(self.margin, (int, float)) or not 0.0 <= float(self.margin) <= 2.0:
            raise ConfigError("margin must be a number between 0 and 2 (a fraction of the face size), got "
                              f"{self.margin!r}.")
        check_method(self.apex_method)
        for name in ("align", "annotated_apex"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}.")

    def __reduce__(self) -> tuple:  # flow_params is a read-only mapping, which plain pickle cannot copy
        return (PreprocessSettings.from_dict, (self.to_dict(),))

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON/YAML-friendly values."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["flow_params"] = dict(self.flow_params)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PreprocessSettings:
        """Settings from :meth:`to_dict`'s output; unknown keys are an error that names them."""
        known = [f.name for f in fields(cls)]
        unknown = [k for k in values if k not in known]
        if unknown:
            raise ConfigError(f"Unknown preprocessing setting {unknown[0]!r}.{did_you_mean(unknown[0], known)} "
                              f"Valid settings: {', '.join(known)}.")
        return cls(**dict(values))

    def key(self) -> str:
        """A stable 16-hex-digit hash of the settings (and :data:`PIPELINE_VERSION`): the cache key."""
        text = json.dumps({"version": PIPELINE_VERSION, **self.to_dict()}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def aligner(self) -> FaceAligner:
        """A :class:`FaceAligner` with these settings' margin and crop size."""
        return FaceAligner(margin=self.margin, size=self.crop_size)


@dataclass
class ClipResult:
    """What :func:`process_clip` computes for one clip.

    Attributes:
        map: the model input, uint8 (3, size, size), channels u, v, strain, each 0-255.
        flow: the unquantised onset->apex flow on the face crop, float32 (crop_size, crop_size, 2), pixels.
        strain: its optical strain, float32 (crop_size, crop_size).
        onset_face: the aligned onset face (crop, 68 landmarks, matrix), or None with ``align=False``.
        apex_face: the apex frame under the onset's transform (landmarks predicted in the onset's face
            box), or None with ``align=False``.
        onset: 0-based index of the onset frame in the frames given.
        apex: 0-based index of the apex frame.
        apex_estimated: whether the apex was estimated (``apex_method``) rather than given.
        timings: seconds spent in ``face``, ``flow`` (flow and strain) and ``map`` (plus ``apex`` when it
            was estimated).
    """

    map: np.ndarray
    flow: np.ndarray
    strain: np.ndarray
    onset_face: AlignedFace | None
    apex_face: AlignedFace | None
    onset: int
    apex: int
    apex_estimated: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def _check_index(name: str, value: Any, n: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ClipError(f"{name} must be a frame index (an integer), got {value!r}.")
    if not 0 <= int(value) < n:
        raise ClipError(f"{name} index {value} is beyond the clip: it has {n} frames (indices 0-{n - 1}).")
    return int(value)


def _resize(frame: np.ndarray, size: int) -> np.ndarray:
    h, w = frame.shape[:2]
    interp = cv2.INTER_AREA if size < max(h, w) else cv2.INTER_LINEAR
    return cv2.resize(frame, (size, size), interpolation=interp)


def run_clip(frames: Sequence[np.ndarray], onset: int, apex: int | None, settings: PreprocessSettings,
             aligner: FaceAligner | None = None, *, last: int | None = None) -> ClipResult:
    """:func:`process_clip`, with ``apex=None`` estimating the apex among frames ``onset+1 .. last``.

    Args:
        frames: the clip's frames (any ``Sequence``; only the frames used are accessed).
        onset: 0-based onset index.
        apex: 0-based apex index, or None to estimate it with ``settings.apex_method``.
        settings: the preprocessing settings.
        aligner: the face aligner (default ``settings.aligner()``); ignored with ``align=False``.
        last: last candidate frame when estimating (default the clip's last frame).
    """
    n = len(frames)
    onset = _check_index("onset", onset, n)
    if apex is not None:
        apex = _check_index("apex", apex, n)
        if apex < onset:
            raise ClipError(f"The onset (index {onset}) comes after the apex (index {apex}); the flow goes from the "
                            "onset to the later apex frame. Check the annotation.")
        if apex == onset:
            raise ClipError(f"The apex equals the onset (index {onset}): there is no onset-to-apex motion. Give a "
                            "later apex, or none to estimate it.")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    onset_face = apex_face = None
    if settings.align:
        aligner = aligner or settings.aligner()
        onset_face = aligner.align(frames[onset])
        crop = lambda i: aligner.warp(frames[i], onset_face.matrix)  # noqa: E731
    else:
        crop = lambda i: _resize(frames[i], settings.crop_size)  # noqa: E731
    timings["face"] = time.perf_counter() - t
    estimated = apex is None
    if apex is None:
        t = time.perf_counter()
        stop = n - 1 if last is None else _check_index("last", last, n)
        if stop <= onset:
            raise ClipError(f"No frame follows the onset (index {onset} of a {n}-frame clip, last candidate {stop}): "
                            "cannot estimate an apex; give the frames up to the offset, an earlier onset, or the apex.")
        candidates = [onset_face.image if onset_face is not None else crop(onset)]
        candidates += [crop(i) for i in range(onset + 1, stop + 1)]
        apex = onset + estimate_apex(candidates, 0, method=settings.apex_method)
        timings["apex"] = time.perf_counter() - t
    t = time.perf_counter()
    if onset_face is not None:
        assert aligner is not None
        apex_face = aligner.follow(frames[apex], onset_face)
        a, b = onset_face.image, apex_face.image
    else:
        a, b = crop(onset), crop(apex)
    timings["face"] += time.perf_counter() - t
    t = time.perf_counter()
    flow = compute_flow(a, b, settings.flow_method, params=settings.flow_params)
    strain = optical_strain(flow)
    timings["flow"] = time.perf_counter() - t
    t = time.perf_counter()
    fmap = np.clip(np.rint(flow_to_map(flow, size=settings.size, strain=strain)), 0, 255).astype(np.uint8)
    timings["map"] = time.perf_counter() - t
    return ClipResult(map=fmap, flow=flow, strain=strain, onset_face=onset_face, apex_face=apex_face,
                      onset=onset, apex=int(apex), apex_estimated=estimated, timings=timings)


def process_clip(frames: Sequence[np.ndarray], onset: int, apex: int,
                 settings: PreprocessSettings | None = None, *,
                 aligner: FaceAligner | None = None) -> ClipResult:
    """Turn a clip's onset and apex frames into the model input (see the module docstring).

    Args:
        frames: the clip's frames, BGR (or gray) uint8, one size; any ``Sequence`` (only ``frames[onset]``
            and ``frames[apex]`` are read).
        onset: 0-based index of the onset frame.
        apex: 0-based index of the apex frame, after the onset.
        settings: the preprocessing settings (default: ``PreprocessSettings()``).
        aligner: a :class:`FaceAligner` to reuse (default: one made from ``settings``); ignored with
            ``settings.align=False``.

    Returns:
        A :class:`ClipResult`.

    Raises:
        ClipError: an index beyond the clip, the onset after (or equal to) the apex.
        NoFaceError: no face in the onset frame (``align=True``).
        FaceModelError: dlib or its model file is not installed (``align=True``).
    """
    if apex is None:
        raise ClipError("process_clip needs an apex index; use process_video(..., apex=None) to estimate it.")
    return run_clip(frames, onset, apex, settings or PreprocessSettings(), aligner)


@dataclass
class LoadedClip:
    """A clip's frames as :func:`read_clip` loaded them, ready for :func:`run_clip`.

    Attributes:
        frames: the frames (BGR uint8; a folder's are read on access).
        onset: onset index in ``frames``.
        apex: apex index in ``frames`` (None: to be estimated).
        original: the clip's own (onset, apex) when only those two frames were read, else None.
        where: `` (path)`` for messages ('' for frames given in memory).
    """

    frames: Sequence[np.ndarray]
    onset: int
    apex: int | None
    original: tuple[int, int] | None = None
    where: str = ""

    def run(self, settings: PreprocessSettings, aligner: FaceAligner | None = None) -> ClipResult:
        """:func:`run_clip` on these frames, errors naming the clip, frame indices as the clip numbers them."""
        try:
            result = run_clip(self.frames, self.onset, self.apex, settings, aligner)
        except ClipError as e:
            raise type(e)(f"{e}{self.where}") from None
        if self.original is not None:  # report the clip's own frame indices
            result.onset, result.apex = self.original
        return result


def read_clip(clip: str | os.PathLike | Sequence[np.ndarray], onset: int | None = None, apex: int | None = None
              ) -> LoadedClip:
    """Read a clip (the one place that does): a video file, a folder of frame images, or BGR uint8 frames.

    With ``apex`` given, a file clip is read only at the onset and the apex (a video is decoded up to the apex).

    Args:
        clip: a video file, a folder of frame images (natural order of names), or a sequence of frames.
        onset: 0-based onset index (default 0).
        apex: 0-based apex index (default None: estimated later).

    Raises:
        ClipError: a bad index, the onset not before the apex, or frames that are not images (and what
            :func:`epir.preprocess.video.read_frames` raises for a missing or unreadable file).
    """
    onset = 0 if onset is None else onset
    for name, value in (("onset", onset), ("apex", apex)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0):
            raise ClipError(f"{name} must be a frame index (an integer from 0), got {value!r}.")
    if apex is not None and apex <= onset:
        raise ClipError(
            f"The onset (frame {onset}) must come before the apex (frame {apex}): the flow goes from the onset "
            "to the later apex. Check onset/apex (--onset/--apex), or leave apex out to estimate it."
        )
    if isinstance(clip, (str, os.PathLike)):
        path = Path(clip).expanduser()
        where = f" ({path})"
        if apex is not None:
            return LoadedClip(read_frames(path, indices=[onset, apex]), 0, 1, (int(onset), int(apex)), where)
        frames: Sequence[np.ndarray] = FrameSequence(list_frames(path)) if path.is_dir() else read_frames(path)
        return LoadedClip(frames, int(onset), None, None, where)
    frames = list(clip)
    if not frames or not all(isinstance(f, np.ndarray) and f.ndim in (2, 3) for f in frames):
        raise ClipError("Expected a video file, a frame folder, or a list of (H, W, 3) BGR uint8 frames.")
    return LoadedClip(frames, int(onset), None if apex is None else int(apex))


def process_video(path: str | Path, onset: int | None = None, apex: int | None = None,
                  settings: PreprocessSettings | None = None,
                  aligner: FaceAligner | None = None) -> ClipResult:
    """Process one clip given as a video file or a folder of frames (a new recording, for inference).

    Args:
        path: a video file (``cv2.VideoCapture``) or a folder of frame images (natural order of names).
        onset: 0-based onset index (default: the first frame).
        apex: 0-based apex index (default: estimated among the frames after the onset with
            ``settings.apex_method``).
        settings: the preprocessing settings.
        aligner: a :class:`FaceAligner` to reuse.

    Returns:
        A :class:`ClipResult` (``apex_estimated`` says whether the apex was estimated).

    Raises:
        ClipError: unreadable or missing clip, onset after apex, an index beyond the clip (see
            :func:`epir.preprocess.video.read_frames` and :func:`process_clip`).
    """
    loaded = read_clip(path, onset, None)  # every frame: the apex, if given, is an index into them
    return LoadedClip(loaded.frames, loaded.onset, apex, None, loaded.where).run(settings or PreprocessSettings(),
                                                                                 aligner)


__all__ = ["APEX_METHODS", "PIPELINE_VERSION", "ClipResult", "LoadedClip", "PreprocessSettings", "process_clip",
           "process_video", "read_clip", "run_clip"]
