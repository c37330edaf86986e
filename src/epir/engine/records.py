"""Typed records of a LOSO run: a fold's record (:class:`FoldRecord`) and the pooled results (:class:`LosoResults`).

On disk both stay plain JSON (``folds/seed<S>/<subject>.json`` and ``results.json``, whose keys are a contract with
users' scripts); in code they are read through these frozen dataclasses, each with one validating constructor
(``from_json``) that names the file and the key that is wrong.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from epir.errors import ConfigError


def _need(d: Mapping[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}; the file is incomplete or not epir's.")


#: The fix a damaged ``results.json`` names: the fold files are the record, and a rerun rewrites the file from them.
REDO_RESULTS = ("The file was edited or is not epir's: rerun the run's `epir loso` command with the same --out (its "
                "finished folds are kept and results.json is written again from them).")


def _number(value: Any, key: str, where: str, *, upper: float | None = None) -> float:
    """``value`` as a finite float >= 0 (and <= ``upper``), else a ConfigError naming ``where`` and ``key``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    if not ok or (upper is not None and value > upper):
        span = f"in [0, {upper:g}]" if upper is not None else ">= 0"
        raise ConfigError(f"{where}: {key} is {value!r}; expected a finite number {span}. {REDO_RESULTS}")
    return float(value)


def _interval(value: Any, key: str, where: str) -> tuple[float, float] | None:
    """An optional ``[low, high]`` score interval (both in [0, 1], low <= high), else a ConfigError."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"{where}: {key} is {value!r}; expected [low, high]. {REDO_RESULTS}")
    low, high = (_number(v, key, where, upper=1.0) for v in value)
    if low > high:
        raise ConfigError(f"{where}: {key} is {list(value)}; expected low <= high. {REDO_RESULTS}")
    return low, high


def _count(value: Any, *, signed: bool = False) -> int:
    """``value`` as a whole number, >= 0 unless ``signed`` (a ValueError otherwise; a bool is not one)."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not numeric or value != int(value) or (value < 0 and not signed):
        raise ValueError(value)
    return int(value)


#: How far a stored row's probabilities may sum from 1 (predictions.csv keeps 6 decimals) ...
PROB_SUM_TOLERANCE = 1e-3
#: ... and how far its predicted class's probability may fall below the row's largest (a tie rounded apart).
ARGMAX_TOLERANCE = 1e-5


def first_bad_probability_row(probs: np.ndarray, predicted: np.ndarray) -> tuple[int, str] | None:
    """The first row of ``probs`` (rows x classes) that is not a distribution with ``predicted`` at its maximum,
    and what is wrong with it: ``"range"`` (a value not finite or outside [0, 1]), ``"sum"`` (not summing to 1) or
    ``"argmax"`` (the predicted class is not the most probable), checked in that order over all rows; None when
    every row is right. The one check of stored probabilities (fold files and ``predictions.csv``).
    """
    rows = np.arange(len(probs))
    for kind, bad in (
        ("range", ~np.isfinite(probs).all(axis=1) | (probs < 0).any(axis=1) | (probs > 1).any(axis=1)),
        ("sum", np.abs(probs.sum(axis=1) - 1) > PROB_SUM_TOLERANCE),
        ("argmax", probs[rows, predicted] < probs.max(axis=1) - ARGMAX_TOLERANCE),
    ):
        if bad.any():
            return int(np.flatnonzero(bad)[0]), kind
    return None


@dataclass(frozen=True)
class Scores:
    """UF1 and UAR (mean and standard deviation over seeds) of a set of samples, and how many there are; with their
    subject-bootstrap intervals where the file has them (:mod:`epir.engine.uncertainty`; None in older runs).
    """

    uf1: float
    uar: float
    uf1_std: float = 0.0
    uar_std: float = 0.0
    n: int = 0
    uf1_ci: tuple[float, float] | None = None
    uar_ci: tuple[float, float] | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "scores") -> Scores:
        """Scores from a ``results.json`` entry (``uf1``, ``uar`` required)."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where}: expected a mapping with uf1 and uar, got {type(d).__name__}.")
        _need(d, ("uf1", "uar"), where)
        uf1, uar = (_number(d[k], k, where, upper=1.0) for k in ("uf1", "uar"))
        uf1_std, uar_std = (_number(d.get(k) or 0.0, k, where) for k in ("uf1_std", "uar_std"))
        try:
            n = _count(d.get("n") or 0)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: n is {d.get('n')!r}; expected a count of samples (a whole number >= 0). "
                              f"{REDO_RESULTS}") from None
        uf1_ci, uar_ci = (_interval(d.get(k), k, where) for k in ("uf1_ci", "uar_ci"))
        return cls(uf1, uar, uf1_std, uar_std, n, uf1_ci, uar_ci)


@dataclass(frozen=True)
class LosoResults:
    """``results.json`` of a run as a typed record (the dict itself stays in :attr:`raw`).

    Attributes:
        protocol: ``honest``, ``oracle-epoch (optimistic)`` or ``published per-fold weights``.
        overall: scores pooled over every fold (mean ± std over seeds).
        per_dataset: scores per source dataset.
        seeds: the seeds run.
        class_names: the class of each label index.
        confusion: the confusion matrix summed over seeds (rows: true class).
        evaluation: ``CDE`` or ``SDE(...)``.
        model: the model's name ('' when not recorded).
        dataset: the dataset's name ('' when not recorded).
        n_folds: folds per seed (0 when not recorded).
        params: parameters of one model (None when not recorded).
        params_total: parameters of every model of a fold (an in-fold ensemble's total).
        flops_per_sample: forward FLOPs of one sample (None when not counted).
        flops_total: FLOPs of one whole prediction of a sample: every network that predicts, each forward pass
            (None when not counted, or in runs written before round 17).
        wall_seconds: the wall time of the invocation that wrote the file (None when not recorded); folds it resumed
            from an earlier invocation took none of it (``resumed_folds``).
        wall_seconds_total: the wall time of every invocation of the run directory, summed: since round 19 those
            stopped before the end too (``invocations.json``, :class:`epir.engine.runstore.Invocations`), before it
            those that wrote ``results.json`` (None when not recorded, as in runs written before round 18, or where
            an earlier invocation's time is unknown).
        raw: the whole ``results.json`` content.
    """

    protocol: str
    overall: Scores
    per_dataset: Mapping[str, Scores]
    seeds: tuple[int, ...]
    class_names: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]
    evaluation: str = "CDE"
    model: str = ""
    dataset: str = ""
    n_folds: int = 0
    params: int | None = None
    params_total: int | None = None
    flops_per_sample: int | None = None
    flops_total: int | None = None
    wall_seconds: float | None = None
    wall_seconds_total: float | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def uf1(self) -> float:
        """Overall UF1 (mean over seeds)."""
        return self.overall.uf1

    @property
    def uar(self) -> float:
        """Overall UAR (mean over seeds)."""
        return self.overall.uar

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "results") -> LosoResults:
        """Validate a ``results.json`` mapping (``where`` names it in errors) and return it as a record."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where}: expected a JSON object of results, got {type(d).__name__}.")
        _need(d, ("protocol", "uf1", "uar"), where)
        per = d.get("per_dataset") or {}
        if not isinstance(per, Mapping):
            raise ConfigError(f"{where}: per_dataset is {type(per).__name__}; expected a mapping of source to "
                              f"scores. {REDO_RESULTS}")
        n = d.get("n")
        if n is None:
            n = sum(int(e.get("n") or 0) for e in per.values())
        overall = Scores.from_json({**d, "n": n}, where)
        per_dataset = {str(s): Scores.from_json(e, f"{where}: per_dataset[{s}]") for s, e in per.items()}
        key = "seeds"
        try:
            seeds = tuple(_count(s, signed=True) for s in d.get("seeds") or (0,))
            key = "confusion"
            confusion = tuple(tuple(_count(v) for v in row) for row in d.get("confusion") or ())
            key = "n_folds"
            n_folds = _count(d.get("n_folds") or 0)
        except (TypeError, ValueError):
            sign = "" if key == "seeds" else " >= 0"
            got = d.get(key)
            raise ConfigError(f"{where}: {key} is {got!r}; expected whole numbers{sign}. {REDO_RESULTS}") from None
        return cls(
            protocol=str(d["protocol"]),
            overall=overall,
            per_dataset=per_dataset,
            seeds=seeds,
            class_names=tuple(str(c) for c in d.get("class_names") or ()),
            confusion=confusion,
            evaluation=str(d.get("evaluation") or "CDE"),
            model=str(d.get("model") or ""),
            dataset=str(d.get("dataset") or ""),
            n_folds=n_folds,
            params=d.get("params"),
            params_total=d.get("params_total"),
            flops_per_sample=d.get("flops_per_sample"),
            flops_total=d.get("flops_total"),
            wall_seconds=d.get("wall_seconds"),
            wall_seconds_total=d.get("wall_seconds_total"),
            raw=dict(d),
        )

    @classmethod
    def load(cls, run_dir: str | Path) -> LosoResults:
        """``RUN_DIR/results.json`` as a record."""
        path = Path(run_dir) / "results.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: cannot read the run's results ({type(e).__name__}: {e}).") from None
        return cls.from_json(data, str(path))

    def rows(self) -> list[tuple[str, Scores]]:
        """``("all", overall)`` then each source dataset's scores, in the file's order."""
        return [("all", self.overall), *self.per_dataset.items()]


@dataclass(frozen=True)
class FoldRecord:
    """One finished fold (``folds/seed<S>/<subject>.json``): the held-out rows and what the model said of them.

    Attributes:
        seed: the run seed.
        subject: the held-out subject (namespaced, e.g. ``casme2/sub01``).
        indices: the dataset rows of the subject.
        true: their labels.
        predicted: the predicted class of each.
        probs: the class probabilities of each.
        epoch: the epoch kept (the last one, or the oracle's pick).
        seconds: the fold's training and prediction time.
        n_train: training rows.
        clips: the rows' clip names (checked when a run resumes).
        extra: whatever else the file holds (``curve``, ``selection``, a teacher's ``teacher_probs`` and, where they
            were blended, the model's own ``model_probs``, ...).
    """

    seed: int
    subject: str
    indices: tuple[int, ...]
    true: tuple[int, ...]
    predicted: tuple[int, ...]
    probs: tuple[tuple[float, ...], ...]
    epoch: int | None = None
    seconds: float = 0.0
    n_train: int = 0
    clips: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    #: Keys every fold file has.
    REQUIRED = ("seed", "subject", "indices", "true", "predicted", "probs")

    @classmethod
    def from_json(cls, d: Any, where: str = "fold record") -> FoldRecord:
        """Validate the structure of a fold file's content (types and lengths; whether the rows belong to the
        dataset is :func:`epir.engine.runstore.read_fold_file`'s check).
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where}: a fold record is a JSON object, got {type(d).__name__}.")
        _need(d, cls.REQUIRED, where)
        lists = {k: d[k] for k in ("indices", "true", "predicted", "probs")}
        if not all(isinstance(v, list) for v in lists.values()):
            raise ConfigError(f"{where}: indices, true, predicted and probs must be lists.")
        n = len(lists["indices"])
        if any(len(v) != n for v in lists.values()):
            raise ConfigError(f"{where}: its true, predicted and probs lists differ in length from indices.")
        known = {"seed", "subject", "indices", "true", "predicted", "probs", "epoch", "seconds", "n_train", "clips"}
        return cls(
            seed=d["seed"], subject=d["subject"], indices=tuple(d["indices"]), true=tuple(d["true"]),
            predicted=tuple(d["predicted"]), probs=tuple(tuple(p) for p in d["probs"]), epoch=d.get("epoch"),
            seconds=float(d.get("seconds") or 0.0), n_train=int(d.get("n_train") or 0),
            clips=tuple(d.get("clips") or ()), extra={k: v for k, v in d.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        """The fold file's content (plain JSON types)."""
        out: dict[str, Any] = {
            "seed": self.seed, "subject": self.subject, "indices": list(self.indices), "true": list(self.true),
            "predicted": list(self.predicted), "probs": [list(p) for p in self.probs], "epoch": self.epoch,
            "seconds": self.seconds, "n_train": self.n_train,
        }
        if self.clips:
            out["clips"] = list(self.clips)
        out.update(self.extra)
        return out


__all__ = ["ARGMAX_TOLERANCE", "PROB_SUM_TOLERANCE", "FoldRecord", "LosoResults", "Scores", "first_bad_probability_row"]
