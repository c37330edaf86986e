"""Errors raised by epir: one small hierarchy, all defined here; every message says what was expected and how to
fix it. Library messages name config keys (``train.epochs``); the command line may add its flag.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class EpirError(Exception):
    """Base class of every error epir raises on purpose."""


class ConfigError(EpirError, ValueError):
    """A configuration value or command-line option is invalid."""


class DatasetError(EpirError, ValueError):
    """A dataset file is present but its content is wrong (bad row, corrupt image, ...)."""


class DatasetNotFoundError(EpirError, FileNotFoundError):
    """A dataset root or one of its files does not exist."""


class DivergedError(EpirError, RuntimeError):
    """Training diverged (a non-finite loss or weights): the fold is stopped, never scored."""


class UnknownNameError(EpirError, KeyError):
    """A name (model, dataset, config key) is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""



class ExportError(EpirError, RuntimeError):
    """The model could not be exported to ONNX, or the exported model does not reproduce PyTorch."""


class CheckpointError(EpirError, ValueError):
    """A checkpoint is present but invalid: malformed, tampered with, or not matching its model."""


class CheckpointNotFoundError(EpirError, FileNotFoundError):
    """A checkpoint directory or one of its files does not exist."""


class UnknownChoiceError(UnknownNameError, ConfigError):
    """An unknown scheme or dataset name: an ``UnknownNameError`` that is also a ``ConfigError``."""


class MapRangeWarning(UserWarning):
    """A dataset's flow maps look scaled to 0-1 rather than epir's 0-255 per channel."""


class AnnotationWarning(UserWarning):
    """A label sheet has rows with missing or impossible values, or a fix did not apply."""


class ClipError(DatasetError):
    """A clip cannot be processed: missing or unreadable frames, no face, impossible onset/apex, ...

    Attributes:
        kind: a short category for reports (``"bad clip"`` here; subclasses say more).
    """

    kind = "bad clip"


class MissingFrameError(ClipError):
    """A frame file, frame folder or video that the clip needs does not exist."""

    kind = "missing frame"


class UnreadableImageError(ClipError):
    """A frame file or video exists but cannot be decoded."""

    kind = "unreadable image"


class FaceModelError(EpirError, RuntimeError):
    """dlib or the landmark model files are not installed."""


class NoFaceError(ClipError):
    """No face was found in a frame."""

    kind = "no face"


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to ``name`` (difflib, cutoff 0.5), or None."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return close[0] if close else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return a ' Did you mean X?' suffix for the closest of ``choices``, or ''.

    >>> did_you_mean("epri", ["epir", "ststnet"])
    " Did you mean 'epir'?"
    >>> did_you_mean("zzz", ["epir"])
    ''
    """
    close = closest(name, choices)
    return f" Did you mean {close!r}?" if close else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UnknownNameError:
    """Build the error for an unknown ``kind`` named ``name`` with the list of known ones."""
    choices = sorted(choices)
    return UnknownNameError(
        f"Unknown {kind} {name!r}.{did_you_mean(name, choices)} Known {kind}s: {', '.join(choices)}."
    )
