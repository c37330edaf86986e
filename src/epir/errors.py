"""Errors raised by epir: one small hierarchy, every message says what was expected and how to fix it."""
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


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return a ' Did you mean X?' suffix for the closest of ``choices``, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UnknownNameError:
    """Build the error for an unknown ``kind`` named ``name`` with the list of known ones."""
    choices = sorted(choices)
    return UnknownNameError(
        f"Unknown {kind} {name!r}.{did_you_mean(name, choices)} Known {kind}s: {', '.join(choices)}."
    )
