"""Reading a clip's frames: a video file (``cv2.VideoCapture``) or a folder of frame images.

A folder's frames are its image files (:data:`IMAGE_EXTS`) in the order of the natural number in their
names, which is how every micro-expression dataset numbers its frames: ``img46.jpg`` (CASME II),
``reg_img46.jpg`` (CASME II cropped), ``006_05562.jpg`` (SAMM), ``image586389.bmp`` (SMIC), ``0.jpg``
(CAS(ME)^3). :func:`frame_number` is the last run of digits in a file's name: the dataset's own frame
number, which the label sheets' onset / apex / offset refer to.

Everything that can be wrong with a clip raises a :class:`ClipError` (a ``DatasetError``) that names the
path and what was expected; its ``kind`` (``"missing frame"``, ``"unreadable image"``, ``"no face"``, ...)
is what the preprocessing report writes in its ``reason`` column.

FFmpeg (OpenCV's video backend) prints its own complaints to stderr (``moov atom not found`` for a truncated
.mp4, decoder errors) before our error says the same thing cleanly, so importing this module silences FFmpeg's
log for the process: ``OPENCV_FFMPEG_LOGLEVEL=-8`` (quiet), unless ``OPENCV_FFMPEG_LOGLEVEL`` or
``OPENCV_FFMPEG_DEBUG`` is already set (set either to see FFmpeg's messages). OpenCV reads it once, when its
FFmpeg backend first opens a file, so a process that opened a video before importing epir keeps FFmpeg's log.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from epir.errors import ClipError, MissingFrameError, UnreadableImageError

#: File name endings read as frame images (case-insensitive).
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
#: File name endings read as videos (case-insensitive); anything else that is a file is tried as a video too.
VIDEO_EXTS = (".avi", ".mp4", ".mov", ".mkv", ".mpg", ".mpeg", ".wmv", ".m4v", ".webm")

_DIGITS = re.compile(r"(\d+)")


def _quiet_ffmpeg() -> None:
    """Set ``OPENCV_FFMPEG_LOGLEVEL=-8`` (AV_LOG_QUIET) unless the user chose FFmpeg's logging (module docstring)."""
    if "OPENCV_FFMPEG_LOGLEVEL" not in os.environ and "OPENCV_FFMPEG_DEBUG" not in os.environ:
        os.environ["OPENCV_FFMPEG_LOGLEVEL"] = "-8"


_quiet_ffmpeg()  # before any capture: OpenCV reads it when its FFmpeg backend first opens a file


def natural_key(name: str) -> tuple:
    """Sort key that orders ``img2`` before ``img10`` (digit runs compared as numbers)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in _DIGITS.split(name) if part)


def frame_number(path: str | Path) -> int | None:
    """The dataset's frame number of a frame file: the last run of digits in its name (None if it has none).

    ``img46.jpg`` -> 46, ``reg_img46.jpg`` -> 46, ``006_05562.jpg`` -> 5562, ``image586389.bmp`` -> 586389.
    """
    runs = _DIGITS.findall(Path(path).stem)
    return int(runs[-1]) if runs else None


def is_image(path: str | Path) -> bool:
    """Whether ``path`` has an image file ending (:data:`IMAGE_EXTS`)."""
    return Path(path).suffix.lower() in IMAGE_EXTS


def list_frames(folder: str | Path) -> list[Path]:
    """The image files of a frame folder, in natural order of their names.

    Raises:
        MissingFrameError: the folder does not exist.
        ClipError: it holds no image files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFrameError(f"Frame folder {folder} does not exist; expected a folder of frame images "
                                f"({', '.join(IMAGE_EXTS)}) or a video file.")
    frames = sorted((p for p in folder.iterdir() if p.is_file() and is_image(p)), key=lambda p: natural_key(p.name))
    if not frames:
        raise ClipError(f"Frame folder {folder} holds no image files; expected frames named with their number "
                        f"(e.g. img46.jpg) with an ending among {', '.join(IMAGE_EXTS)}.")
    return frames


def read_image(path: str | Path) -> np.ndarray:
    """Read one frame as BGR uint8 (H, W, 3); gray and 16-bit images are converted.

    Raises:
        MissingFrameError: the file does not exist.
        UnreadableImageError: OpenCV cannot decode it.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFrameError(f"Frame {path} does not exist.")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise UnreadableImageError(f"Frame {path} cannot be read as an image (corrupt, truncated or not an "
                                   "image); replace the file or leave the clip out.")
    return img


def _open_video(path: Path) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise UnreadableImageError(f"Video {path} cannot be opened by OpenCV (truncated or damaged, an unsupported "
                                   "codec, or not a video); convert it (e.g. to MJPG .avi or H.264 .mp4) or give a "
                                   "folder of frames.")
    return cap


def _read_video(path: Path, indices: Sequence[int] | None) -> list[np.ndarray]:
    cap = _open_video(path)
    try:
        frames: list[np.ndarray] = []
        wanted = None if indices is None else set(indices)
        last = None if indices is None else max(indices, default=-1)
        i = 0
        while last is None or i <= last:
            ok, frame = cap.read()
            if not ok:
                break
            if wanted is None or i in wanted:
                frames.append(frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
            i += 1
    finally:
        cap.release()
    if i == 0:
        raise UnreadableImageError(f"Video {path} opened but no frame could be decoded; check the file.")
    if indices is None:
        return frames
    by_index = dict(zip(sorted(wanted or ()), frames))
    beyond = [k for k in indices if k not in by_index]
    if beyond:
        raise ClipError(f"Frame index {beyond[0]} is beyond the clip: video {path} has {i} frames "
                        f"(indices 0-{i - 1}).")
    return [by_index[k] for k in indices]


def _same_size(first: np.ndarray, first_path: Path, frame: np.ndarray, path: Path) -> None:
    """A clip's frames share one size: onset and apex are compared pixel by pixel."""
    if frame.shape[:2] != first.shape[:2]:
        raise ClipError(
            f"Frame {path} is {frame.shape[1]}x{frame.shape[0]} but {first_path} is {first.shape[1]}x{first.shape[0]}: "
            f"a clip's frames must all have one size (remove or resize the odd frames)."
        )


def _check_indices(indices: Sequence[int], n: int, path: Path) -> None:
    for k in indices:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
            raise ClipError(f"Frame indices must be integers, got {k!r} for {path}.")
        if k < 0 or k >= n:
            raise ClipError(f"Frame index {k} is beyond the clip: {path} has {n} frames (indices 0-{n - 1}).")


def read_frames(path: str | Path, *, indices: Sequence[int] | None = None) -> list[np.ndarray]:
    """Read the frames of a clip: a video file or a folder of frame images.

    Args:
        path: a video file (anything ``cv2.VideoCapture`` opens: .avi, .mp4, ...) or a folder of frame images
            sorted by the natural number in their names (``img2.jpg`` before ``img10.jpg``).
        indices: 0-based positions of the frames to read (in the order given); None reads every frame.

    Returns:
        BGR uint8 frames of shape (H, W, 3).

    Raises:
        MissingFrameError: the path does not exist.
        UnreadableImageError: a video that cannot be opened or decoded, or an image that cannot be read.
        ClipError: a folder without images, or an index beyond the clip.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        files = list_frames(path)
        if indices is None:
            chosen = files
        else:
            _check_indices(indices, len(files), path)
            chosen = [files[int(k)] for k in indices]
        frames = [read_image(p) for p in chosen]
        for p, f in zip(chosen, frames):
            _same_size(frames[0], chosen[0], f, p)
        return frames
    if not path.exists():
        raise MissingFrameError(f"Clip {path} does not exist; expected a video file or a folder of frame images.")
    if indices is not None:
        bad = [k for k in indices if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 0]
        if bad:
            raise ClipError(f"Frame index {bad[0]!r} is not valid for {path}: indices are integers from 0.")
    return _read_video(path, None if indices is None else [int(k) for k in indices])


class FrameSequence(Sequence[np.ndarray]):
    """The frames of a list of image files, read on access (each at most once; the last few are kept).

    Lets the pipeline take a whole clip as a ``Sequence`` while reading only the frames it uses.
    """

    def __init__(self, paths: Sequence[str | Path], *, keep: int = 4) -> None:
        self.paths = [Path(p) for p in paths]
        self._keep = keep
        self._cache: dict[int, np.ndarray] = {}
        self._first: tuple[np.ndarray, Path] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"frame index {index} out of range for a clip of {len(self)} frames")
        if i not in self._cache:
            if len(self._cache) >= self._keep:
                self._cache.pop(next(iter(self._cache)))
            frame = read_image(self.paths[i])
            if self._first is None:
                self._first = (frame, self.paths[i])
            else:
                _same_size(self._first[0], self._first[1], frame, self.paths[i])
            self._cache[i] = frame
        return self._cache[i]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))


__all__ = [
    "IMAGE_EXTS", "VIDEO_EXTS", "ClipError", "FrameSequence", "MissingFrameError", "UnreadableImageError",
    "frame_number", "is_image", "list_frames", "natural_key", "read_frames", "read_image",
]
