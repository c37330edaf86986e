"""The run directory's integrity: the run fingerprint checked on resume, fold files checked before use, atomic
writes with unique temporary names, and an OS-level lock held while a run writes.

A finished fold file is reused only if it provably belongs to the run being resumed: the fingerprint
(protocol, published per-fold weights and their hashes, the dataset's identity, the package version) matches
the one saved when the run started, and the file itself names the seed, the subject and the clips it
predicted, which must be the dataset's rows at its indices. Anything else is refused with the differences
listed; nothing finished is altered by a refused rerun.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from epir._version import __version__
from epir.config import RunConfig
from epir.data import FlowDataset
from epir.errors import ConfigError
from epir.fileio import write_atomic

#: The fingerprint file in a run directory.
FINGERPRINT = "fingerprint.json"
LOCK = ".lock"


def dataset_digest(dataset: FlowDataset) -> str:
    """SHA-256 over the loaded samples: maps, labels, subjects and clip names, in order."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(dataset.x.numpy()).tobytes())
    h.update(np.ascontiguousarray(dataset.y.numpy()).tobytes())
    h.update("\n".join(f"{s}\t{c}" for s, c in zip(dataset.subjects, dataset.clips)).encode())
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_fingerprint(
    cfg: RunConfig, dataset: FlowDataset, protocol: str, fold_weights: str | os.PathLike | None
) -> dict[str, Any]:
    """What a finished fold's result depends on beyond the configuration (which config.yaml holds)."""
    fp: dict[str, Any] = {
        "protocol": protocol,
        "fold_weights": None,
        "dataset": {"name": dataset.name, "n": len(dataset), "sha256": dataset_digest(dataset)},
        "epir_version": __version__,
    }
    if fold_weights is not None:
        folder = Path(fold_weights).resolve()
        hashes = {}
        for sid in sorted(set(dataset.subject_ids)):
            f = folder / f"{sid}.pth"
            hashes[sid] = _file_sha256(f) if f.is_file() else None
        fp["fold_weights"] = {"folder": str(folder), "sha256": hashes}
    return fp


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    if old != new:
        show = lambda v: (v[:12] + "...") if isinstance(v, str) and len(v) > 40 else v  # noqa: E731
        return [f"{prefix.rstrip('.')}: {show(old)!r} -> {show(new)!r}"]
    return []


def check_fingerprint(out_dir: Path, fingerprint: dict[str, Any]) -> None:
    """Refuse to resume ``out_dir`` when its saved fingerprint differs from ``fingerprint``.

    A run directory from before fingerprints (none saved) is accepted: its fold files are still checked one by
    one against the dataset (:func:`read_fold_file`).
    """
    path = out_dir / FINGERPRINT
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable run fingerprint ({e}); delete {out_dir} to start over.") from None
    diffs = _differences(old, fingerprint)
    if diffs:
        raise ConfigError(
            f"{out_dir} holds a run of other data or another protocol ({'; '.join(diffs)}): its finished folds "
            f"cannot be reused. Use another --out, or delete {out_dir} to start over."
        )


def read_fold_file(path: Path, dataset: FlowDataset, seed: int, subject: str) -> dict[str, Any]:
    """A finished fold's record, after checking it is this fold's on this dataset (else a ConfigError)."""

    def bad(why: str) -> ConfigError:
        return ConfigError(
            f"{path}: {why}. The run directory does not match this run; delete that file to recompute the fold, "
            f"or use another --out."
        )

    try:
        rec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise bad(f"not a readable fold record ({type(e).__name__}: {e})") from None
    need = ("seed", "subject", "indices", "true", "predicted", "probs")
    if not isinstance(rec, dict) or any(k not in rec for k in need):
        raise bad(f"a fold record needs the keys {', '.join(need)}")
    if rec["seed"] != seed or rec["subject"] != subject:
        raise bad(f"it holds seed {rec['seed']!r}, subject {rec['subject']!r}; expected seed {seed}, subject "
                  f"{subject!r}")
    idx = rec["indices"]
    n = len(idx)
    if not all(isinstance(i, int) and 0 <= i < len(dataset) for i in idx) or not n:
        raise bad(f"its indices are not rows of the dataset (0..{len(dataset) - 1})")
    if any(len(rec[k]) != n for k in ("true", "predicted", "probs")):
        raise bad("its true, predicted and probs lists differ in length from indices")
    rows = [i for i in range(len(dataset)) if dataset.subjects[i] == subject]
    if sorted(idx) != rows:
        raise bad(f"its rows are not the {len(rows)} rows of subject {subject!r} in this dataset")
    if "clips" in rec and rec["clips"] != [dataset.clips[i] for i in idx]:
        raise bad("its clips are not the dataset's clips at its indices (the label table was reordered or edited)")
    if rec["true"] != [int(dataset.y[i]) for i in idx]:
        raise bad("its true labels differ from the dataset's")
    k = dataset.num_classes
    if any(not isinstance(p, int) or not 0 <= p < k for p in rec["predicted"]) or any(len(p) != k for p in rec["probs"]):
        raise bad(f"its predictions are not classes 0..{k - 1}")
    return rec


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON (no NaN) with :func:`epir.fileio.write_atomic`: complete or absent."""
    text = json.dumps(obj, allow_nan=False)
    write_atomic(path, lambda tmp: tmp.write_text(text))


class RunLock:
    """An exclusive OS-level lock on ``OUT/.lock`` held while a run writes into ``OUT`` (released by
    :meth:`release` or when the process ends, even when killed). A second run on the same directory is refused."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / LOCK
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            self._fd = None
            raise ConfigError(
                f"{out_dir} is in use by another epir run (locked: {self.path}). Wait for it to finish, or use "
                f"another --out."
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __del__(self) -> None:
        self.release()


__all__ = ["FINGERPRINT", "RunLock", "check_fingerprint", "dataset_digest", "read_fold_file", "run_fingerprint",
           "write_json_atomic"]
