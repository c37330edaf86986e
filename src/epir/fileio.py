"""Writing files so that a reader never sees a half-written one: through a unique temporary file beside the
target and an atomic rename (``os.replace``). Used by run directories, checkpoints and preprocessing outputs.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


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


__all__ = ["write_atomic"]
