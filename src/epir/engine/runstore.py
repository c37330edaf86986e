"""The run directory's integrity: the run fingerprint checked on resume, fold files checked before use, atomic
writes with unique temporary names, and an OS-level lock held while a run writes.

A finished fold file is reused only if it provably belongs to the run being resumed: the fingerprint
(protocol, published per-fold weights and their hashes, the dataset's identity, the package version and the
training revision) matches
the one saved when the run started, and the file itself names the seed, the subject and the clips it
predicted, which must be the dataset's rows at its indices. Anything else is refused with the differences
listed; nothing finished is altered by a refused rerun.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from epir._version import __version__
from epir.config import RunConfig
from epir.data import FlowDataset
from epir.engine.records import FoldRecord, first_bad_probability_row
from epir.errors import ConfigError
from epir.fileio import writable_dir, write_atomic
from epir.runsetup import execution_free, resolve_config

#: Raised whenever the same configuration and data train differently than before, so that a run directory started
#: by older code is not resumed with folds of two kinds. 2 (round 9): batched models replay their own dropout and
#: stochastic-depth masks instead of drawing them from one stream for the whole batch (``epir.engine.batched``).
TRAINING_REVISION = 2

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
        "training_revision": TRAINING_REVISION,
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
            f"{out_dir} holds a run of other data, another protocol or older training code ({'; '.join(diffs)}): "
            "its finished folds "
            f"cannot be reused. Use another out_dir (--out), or delete {out_dir} to start over."
        )


#: How far a fold's ensemble probabilities may be from the mean of its members' as stored (float32 means, JSON).
MEMBER_MEAN_TOLERANCE = 1e-5


def read_fold_file(path: Path, dataset: FlowDataset, seed: int, subject: str) -> dict[str, Any]:
    """A finished fold's record, after checking it is this fold's on this dataset (else a ConfigError)."""

    def bad(why: str) -> ConfigError:
        return ConfigError(
            f"{path}: {why}. The run directory does not match this run; delete that file to recompute the fold, "
            f"or use another out_dir (--out)."
        )

    try:
        rec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise bad(f"not a readable fold record ({type(e).__name__}: {e})") from None
    try:
        FoldRecord.from_json(rec, str(path))  # the structure: keys, list types, equal lengths
    except ConfigError as e:
        raise bad(str(e).removeprefix(f"{path}: ").rstrip(".")) from None
    if rec["seed"] != seed or rec["subject"] != subject:
        raise bad(f"it holds seed {rec['seed']!r}, subject {rec['subject']!r}; expected seed {seed}, subject "
                  f"{subject!r}")
    idx = rec["indices"]
    n = len(idx)
    if not all(isinstance(i, int) and 0 <= i < len(dataset) for i in idx) or not n:
        raise bad(f"its indices are not rows of the dataset (0..{len(dataset) - 1})")
    rows = np.flatnonzero(np.asarray(dataset.subjects) == subject).tolist()  # as epir.engine.folds.fold_split
    if sorted(idx) != rows:
        raise bad(f"its rows are not the {len(rows)} rows of subject {subject!r} in this dataset")
    if "clips" in rec and rec["clips"] != [dataset.clips[i] for i in idx]:
        raise bad("its clips are not the dataset's clips at its indices (the label table was reordered or edited)")
    if rec["true"] != [int(dataset.y[i]) for i in idx]:
        raise bad("its true labels differ from the dataset's")
    k = dataset.num_classes
    bad_class = any(not isinstance(p, int) or not 0 <= p < k for p in rec["predicted"])
    if bad_class or any(len(p) != k for p in rec["probs"]):
        raise bad(f"its predictions are not classes 0..{k - 1}")
    try:
        probs = np.asarray(rec["probs"], dtype=float)
    except (TypeError, ValueError):
        raise bad("its probs are not numbers") from None
    found = first_bad_probability_row(probs, np.asarray(rec["predicted"]))
    if found is not None:
        raise bad({"range": "its probs are not all finite numbers in [0, 1]",
                   "sum": "its probs do not sum to 1 in every row",
                   "argmax": "its predicted classes are not those of the largest probabilities"}[found[1]])
    for key in ("teacher_probs", "model_probs"):  # the parts of a blend with a teacher (epir.engine.folds.add_teacher)
        if key in rec and not _distributions(rec[key], n, k):
            raise bad(f"its {key} are not {n} rows of {k} class probabilities summing to 1")
    if "member_probs" in rec:  # an in-fold ensemble's members (epir.engine.folds.add_members)
        members = rec["member_probs"]
        if not isinstance(members, list) or len(members) < 2 or not all(_distributions(m, n, k) for m in members):
            raise bad(f"its member_probs are not a list of 2 or more members' {n} rows of {k} class probabilities "
                      "summing to 1")
        own = np.asarray(rec.get("model_probs", rec["probs"]), dtype=float)  # the ensemble before any blend
        if not np.allclose(np.mean(np.asarray(members, dtype=float), axis=0), own, atol=MEMBER_MEAN_TOLERANCE):
            raise bad("the mean of its member_probs is not the ensemble's probabilities (model_probs, or probs "
                      "without a teacher's blend)")
    return rec


def _distributions(rows: Any, n: int, k: int) -> bool:
    """Whether ``rows`` are ``n`` lists of ``k`` finite probabilities in [0, 1] that sum to 1."""
    if not isinstance(rows, list) or len(rows) != n or any(not isinstance(r, list) or len(r) != k for r in rows):
        return False
    try:
        p = np.asarray(rows, dtype=float)
    except (TypeError, ValueError):
        return False
    found = first_bad_probability_row(p, p.argmax(axis=1))
    return found is None


def write_json_atomic(path: Path, obj: Any, indent: int | None = None) -> None:
    """Write ``obj`` as strict JSON (no NaN) with :func:`epir.fileio.write_atomic`: complete or absent. With
    ``indent``, laid out for reading, ending with a newline.
    """
    text = json.dumps(obj, indent=indent, allow_nan=False) + ("\n" if indent is not None else "")
    write_atomic(path, lambda tmp: tmp.write_text(text))


class RunLock:
    """An exclusive OS-level lock on ``OUT/.lock`` held while a run writes into ``OUT`` (released by
    :meth:`release` or when the process ends, even when killed). A second run on the same directory is refused.
    """

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / LOCK
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl  # noqa: PLC0415 (POSIX only)
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            self._fd = None
            raise ConfigError(
                f"{out_dir} is in use by another epir run (locked: {self.path}). Wait for it to finish, or use "
                f"another out_dir (--out)."
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __del__(self) -> None:
        self.release()


def fold_file(out_dir: Path, seed: int, subject: str) -> Path:
    """``OUT/folds/seed<S>/<subject>.json`` (a namespaced subject's ``/`` written ``__``)."""
    return out_dir / "folds" / f"seed{seed}" / (subject.replace("/", "__") + ".json")


def check_resume(out_dir: Path, cfg: RunConfig) -> None:
    """Refuse to resume ``out_dir`` when its ``config.yaml`` differs from ``cfg`` in anything but execution
    (:data:`epir.runsetup.EXECUTION_KEYS`).
    """
    path = out_dir / "config.yaml"
    if not path.exists():
        return
    # An older run's config lacks model arguments added since; they took their defaults then.
    old = execution_free(resolve_config(RunConfig.load(path)))
    new = execution_free(cfg)
    diffs = [
        f"{sec}.{k}: {old.get(sec, {}).get(k)!r} -> {v!r}"
        for sec, d in new.items()
        for k, v in d.items()
        if old.get(sec, {}).get(k) != v
    ]
    if diffs:
        raise ConfigError(
            f"{out_dir} holds a run with a different configuration ({'; '.join(diffs)}). "
            f"Use another out_dir (--out), or delete {out_dir} to start over."
        )


#: The run directory's record of every invocation's wall time (:class:`Invocations`).
INVOCATIONS = "invocations.json"


def earlier_wall_seconds(out_dir: Path) -> float | None:
    """The wall time that ``out_dir``'s ``results.json`` records for the invocations before this one: its
    ``wall_seconds_total``, or its ``wall_seconds`` in a file written before round 18 that resumed nothing. 0.0
    without a ``results.json``; None where the file cannot be read or does not say (a sum would then be wrong).
    """
    path = out_dir / "results.json"
    if not path.exists():
        return 0.0
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(earlier, dict):
        return None
    total = earlier.get("wall_seconds_total")
    if total is None and not earlier.get("resumed_folds"):
        total = earlier.get("wall_seconds")
    return float(total) if isinstance(total, (int, float)) and np.isfinite(total) and total >= 0 else None


def _seconds(value: Any) -> bool:
    """Whether ``value`` is a number of seconds: finite and not negative."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value)) and value >= 0


class Invocations:
    """``OUT/invocations.json``: the wall time of every invocation of a run directory, stopped ones included.

    Each invocation adds an entry when it opens the directory, ``{"started", "seconds", "folds", "ended"}``, and
    rewrites it (atomically) after each fold it finishes, when it finishes (``ended: finished``, ``seconds``: its
    ``wall_seconds``) and when it stops on an error or Ctrl+C (``ended: stopped``). An invocation killed outright
    keeps ``ended: running`` and its time up to its last finished fold. ``before`` is the time of invocations made
    before the directory had this file, from its ``results.json`` (:func:`earlier_wall_seconds`); null where that
    cannot be known (fold files without a ``results.json``, a damaged file), and then :meth:`total` is None too:
    a sum that misses an invocation is not given.
    """

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / INVOCATIONS
        self._t0 = time.perf_counter()
        before: float | None
        try:
            record = json.loads(self.path.read_text())
            entries, before = record["invocations"], record["before"]
            if not isinstance(entries, list) or not all(isinstance(e, dict) and _seconds(e.get("seconds"))
                                                        for e in entries) or not (before is None or _seconds(before)):
                raise TypeError("expected 'before' (seconds or null) and 'invocations', entries with their seconds")
        except FileNotFoundError:
            entries = []
            folds = any((out_dir / "folds").glob("seed*/*.json"))
            before = earlier_wall_seconds(out_dir) if (out_dir / "results.json").exists() or not folds else None
        except (OSError, ValueError, KeyError, TypeError) as e:
            warnings.warn(f"{self.path} cannot be read ({type(e).__name__}: {e}); it starts again, and the run's "
                          f"total wall time (wall_seconds_total) is left out from now on.", stacklevel=3)
            entries, before = [], None
        self.record: dict[str, Any] = {"before": before, "invocations": entries}
        self.entry: dict[str, Any] = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                      "seconds": 0.0, "folds": 0, "ended": "running"}
        entries.append(self.entry)
        self._write()

    def _write(self) -> None:
        write_json_atomic(self.path, self.record, indent=2)

    def fold_done(self) -> None:
        """One more fold finished: the entry's time so far."""
        self.entry.update(seconds=round(time.perf_counter() - self._t0, 3), folds=self.entry["folds"] + 1)
        self._write()

    def finish(self, wall_seconds: float) -> float | None:
        """The invocation ends with its results, which time it as ``wall_seconds``: returns :meth:`total`."""
        self.entry.update(seconds=wall_seconds, ended="finished")
        self._write()
        return self.total()

    def stop(self) -> None:
        """The invocation ends without results (an error, Ctrl+C): its time up to now (no-op once finished). Called
        while the error that stopped it is on its way up, so a failure to write is a warning, never a new error.
        """
        if self.entry["ended"] == "running":
            self.entry.update(seconds=round(time.perf_counter() - self._t0, 3), ended="stopped")
            try:
                self._write()
            except OSError as e:
                warnings.warn(f"{self.path}: the stopped invocation's time could not be written ({e}).", stacklevel=3)

    def total(self) -> float | None:
        """Every invocation's seconds, summed with ``before``; None where ``before`` is not known."""
        before = self.record["before"]
        if before is None:
            return None
        return float(before) + sum(float(e["seconds"]) for e in self.record["invocations"])


class FoldStore:
    """A run directory's fold files, or none (``out_dir`` None: records are kept in memory only).

    :meth:`open` locks the directory, refuses a run with another configuration, data or protocol
    (:func:`check_resume`, :func:`check_fingerprint`) and saves ``config.yaml`` and the fingerprint; :meth:`load`
    reads the finished folds back (each checked by :func:`read_fold_file`); :meth:`save` writes one fold's record
    atomically, so an interrupted run loses only the folds that were running.
    """

    def __init__(self, out_dir: str | os.PathLike | None, dataset: FlowDataset) -> None:
        self.out = Path(out_dir) if out_dir is not None else None
        self.dataset = dataset
        self._lock: RunLock | None = None
        self.invocations: Invocations | None = None

    def open(self, cfg: RunConfig, protocol: str, fold_weights: str | os.PathLike | None = None, *,
             seeds: Sequence[int] | None = None, subjects: Sequence[str] | None = None) -> FoldStore:
        """Lock and check the directory, save the run's configuration and fingerprint. A run over ``seeds`` x
        ``subjects`` (when given) that the directory's finished folds go beyond (:meth:`wider`) leaves its
        ``config.yaml`` as it is: that describes the whole run, whose results the subset leaves there too.
        """
        if self.out is None:
            return self
        writable_dir(self.out, "run directory")
        self._lock = RunLock(self.out)
        check_resume(self.out, cfg)
        fingerprint = run_fingerprint(cfg, self.dataset, protocol, fold_weights)
        check_fingerprint(self.out, fingerprint)
        config = self.out / "config.yaml"
        if not config.is_file() or seeds is None or subjects is None or not self.wider(seeds, subjects):
            cfg.save(config)
        write_json_atomic(self.out / FINGERPRINT, fingerprint)
        self.invocations = Invocations(self.out)
        return self

    def path(self, seed: int, subject: str) -> Path | None:
        """The fold's file (None without a directory)."""
        return None if self.out is None else fold_file(self.out, seed, subject)

    def load(self, seeds: Sequence[int], subjects: Sequence[str]
             ) -> tuple[dict[tuple[int, str], dict[str, Any]], list[tuple[int, str]]]:
        """``(finished records by (seed, subject), folds still to run)`` in seed-then-subject order."""
        done: dict[tuple[int, str], dict[str, Any]] = {}
        todo: list[tuple[int, str]] = []
        for seed in seeds:
            for subject in subjects:
                path = self.path(seed, subject)
                if path is not None and path.exists():
                    done[(seed, subject)] = read_fold_file(path, self.dataset, seed, subject)
                else:
                    todo.append((seed, subject))
        return done, todo

    def save(self, rec: dict[str, Any]) -> None:
        """Add the samples' identities (``clips``, checked on resume) and write the record: complete or absent."""
        rec["clips"] = [self.dataset.clips[i] for i in rec["indices"]]
        path = self.path(rec["seed"], rec["subject"])
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, rec)
        if self.invocations is not None:
            self.invocations.fold_done()

    def finish(self, wall_seconds: float) -> float | None:
        """The invocation ends with its results (timed ``wall_seconds``): the run's total wall time over every
        invocation (:meth:`Invocations.total`), None without a directory or where an earlier one's is unknown.
        """
        return None if self.invocations is None else self.invocations.finish(wall_seconds)

    def wider(self, seeds: Sequence[int], subjects: Sequence[str]) -> str:
        """A description of the finished folds here that ``seeds`` x ``subjects`` do not cover ('' when none)."""
        if self.out is None:
            return ""
        wanted = {fold_file(self.out, s, subject).resolve() for s in seeds for subject in subjects}
        extra = [p for p in (self.out / "folds").glob("seed*/*.json") if p.resolve() not in wanted]
        if not extra:
            return ""
        return f"{len(extra)} more fold file(s), e.g. {extra[0].relative_to(self.out)}"

    def close(self) -> None:
        """Record the invocation's time if it did not finish (:meth:`Invocations.stop`) and release the lock."""
        if self.invocations is not None:
            self.invocations.stop()
            self.invocations = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None


__all__ = [
    "FINGERPRINT",
    "INVOCATIONS",
    "TRAINING_REVISION",
    "FoldStore",
    "Invocations",
    "RunLock",
    "check_fingerprint",
    "check_resume",
    "dataset_digest",
    "earlier_wall_seconds",
    "fold_file",
    "read_fold_file",
    "run_fingerprint",
    "write_json_atomic",
]
