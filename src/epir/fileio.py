"""Writing files so that a reader never sees a half-written one: through a unique temporary file beside the
target and an atomic rename (``os.replace``). Used by run directories, checkpoints and preprocessing outputs.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

from epir.errors import ConfigError


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it onto ``path``.

    The file is complete or absent; the temporary name is unique to this process and call, so concurrent
    writers never share one; a failed ``write`` leaves no temporary file behind. The parent folder is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _probe(folder: Path, shown: Path, what: str) -> None:
    """Create ``folder`` and write and remove an empty file in it; an OSError becomes a ConfigError about ``shown``."""
    probe = folder / f".epir-write-probe.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        reason = f"{type(e).__name__}: {e.strerror or e}" + (f" ({e.filename})" if e.filename else "")
        in_the_way = next((a for a in (folder, *folder.parents) if a.exists() and not a.is_dir()), None)
        if in_the_way is not None:
            reason = f"{in_the_way} is a file, not a folder"
        raise ConfigError(f"cannot write the {what} {shown}: {reason}; choose a folder you can write to.") from None


def writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create folder ``path`` (and its parents) and prove a file can be written in it, before any work whose result
    would go there: a folder that cannot be made or written (a missing or read-only parent, a file in the way, a full
    disk) is one :class:`~epir.errors.ConfigError` naming ``what`` and the path, instead of a traceback after the work.
    Returns the path (``~`` expanded).
    """
    path = Path(path).expanduser()
    _probe(path, path, what)
    return path


def writable_parent(path: str | os.PathLike, what: str = "output file") -> Path:
    """:func:`writable_dir` for the folder that will hold file ``path`` (the error names the file). Returns the path
    (``~`` expanded).
    """
    path = Path(path).expanduser()
    _probe(path.parent, path, what)
    return path


__all__ = ["writable_dir", "writable_parent", "write_atomic"]
