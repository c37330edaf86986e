"""Recompute metrics from a run directory's predictions or from a MEGC2019 submission log, and compare two of them."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from epir.config import RunConfig
from epir.data.base import COMPOSITE_CLASSES
from epir.engine.agreement import agreement, format_agreement
from epir.engine.loso import evaluation_of
from epir.engine.results import ORACLE, UNKNOWN, read_megc_log, read_megc_log_meta, read_predictions, summarize
from epir.engine.uncertainty import LEVEL, METHOD, RESAMPLES, holm, paired_difference, subject_differences
from epir.errors import ConfigError, DatasetNotFoundError


@dataclass(frozen=True)
class ScoredRun:
    """What a finished run or a MEGC2019 log holds to score: its predictions and how they were obtained."""

    predictions: pd.DataFrame
    class_names: list[str]
    protocol: str
    absent: str = "skip"
    evaluation: str | None = None


def read_run_dir(run_dir: str | Path) -> ScoredRun:
    """``RUN_DIR/predictions.csv`` with the run's protocol, absent-class policy and evaluation."""
    run = Path(run_dir)
    path = run / "predictions.csv"
    if run.is_file():
        raise DatasetNotFoundError(f"{run} is a file, not a run directory; for a MEGC2019 submission log use "
                                   f"`epir evaluate --megc-log {run}`.")
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} does not exist; is {run} a finished epir run directory?")
    preds, class_names = read_predictions(path)
    protocol, absent, evaluation = UNKNOWN, "skip", None
    if (run / "config.yaml").is_file():
        cfg = RunConfig.load(run / "config.yaml")
        absent = cfg.eval.absent_class
        evaluation = evaluation_of(cfg)
        protocol = ORACLE if cfg.eval.oracle_epoch else protocol
    if "protocol" in preds.columns and preds["protocol"].nunique() == 1:
        protocol = str(preds["protocol"].iloc[0])
    if (run / "results.json").is_file():
        protocol = json.loads((run / "results.json").read_text()).get("protocol", protocol)
    return ScoredRun(preds, class_names, protocol, absent, evaluation)


def read_log(path: str | Path) -> ScoredRun:
    """A MEGC2019 submission log (labels 0..K-1; three classes are named as the composite's)."""
    preds = read_megc_log(path)
    meta = read_megc_log_meta(path)
    return ScoredRun(preds, meta["classes"] or list(COMPOSITE_CLASSES), meta["protocol"], evaluation=meta["evaluation"])


def read_scored(path: str | Path) -> ScoredRun:
    """A run directory, or a MEGC2019 log when ``path`` is a file."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in (".json", ".csv", ".yaml", ".yml"):
        raise ConfigError(f"{path} is one of a run's files, not a run; give its run directory ({path.parent}) or a "
                          "MEGC2019 log (megc_log.txt).")
    return read_log(path) if path.is_file() else read_run_dir(path)


def _summary(run: ScoredRun, absent: str, resamples: int, level: float, method: str) -> dict[str, Any]:
    results = summarize(run.predictions, run.class_names, run.protocol, absent, ci_resamples=resamples,
                        ci_level=level, ci_method=method)
    results["n"] = int(len(run.predictions) // run.predictions["seed"].nunique())
    if run.evaluation:
        results["evaluation"] = run.evaluation
    return results


def evaluate_run_dir(run_dir: str | Path, *, resamples: int = RESAMPLES, level: float = LEVEL,
                     method: str = METHOD) -> dict[str, Any]:
    """Metrics of ``RUN_DIR/predictions.csv`` with the run's protocol and absent-class policy (and the intervals of
    :mod:`epir.engine.uncertainty` with ``resamples``, ``level`` and ``method``).
    """
    run = read_run_dir(run_dir)
    return _summary(run, run.absent, resamples, level, method)


def evaluate_megc_log(path: str | Path, absent: str = "skip", *, resamples: int = RESAMPLES,
                      level: float = LEVEL, method: str = METHOD) -> dict[str, Any]:
    """Metrics of a MEGC2019 submission log (labels 0..K-1; three classes are named as the composite's)."""
    return _summary(read_log(path), absent, resamples, level, method)


def compare_runs(a: str | Path, b: str | Path, *, resamples: int = RESAMPLES, level: float = LEVEL,
                 seed: int = 0, method: str = METHOD, per_subject: bool = False) -> dict[str, Any]:
    """A - B of two finished runs (run directories or MEGC2019 logs) over the same samples: the paired subject
    bootstrap of :func:`epir.engine.uncertainty.paired_difference`, with each run's protocol; with ``per_subject``
    also ``per_subject``, each subject's accuracy under both and the sign test
    (:func:`epir.engine.uncertainty.subject_differences`).

    Raises:
        ConfigError: other classes, another absent-class policy, or other samples or labels.
    """
    ra, rb = read_scored(a), read_scored(b)
    out = _paired(ra, rb, (str(a), str(b)), resamples=resamples, level=level, seed=seed, method=method)
    if per_subject:
        out["per_subject"] = subject_differences(ra.predictions, rb.predictions, names=(str(a), str(b)))
    return out


def _same_classes(ra: ScoredRun, rb: ScoredRun, names: tuple[str, str]) -> None:
    """ConfigError unless two read runs score the same classes."""
    a, b = names
    if ra.class_names != rb.class_names:
        raise ConfigError(f"{a} scores classes {ra.class_names} and {b} {rb.class_names}; compare runs of the same "
                          "classes (the same --labels).")


def agreement_of_runs(a: str | Path, b: str | Path | None = None) -> dict[str, Any]:
    """Where two finished runs (run directories or MEGC2019 logs) err over the same samples, beside where each run's
    own seeds err (:func:`epir.engine.agreement.agreement`); with ``b`` None, the seeds of ``a`` alone.

    Returns:
        ``{"versus": <agreement of a and b> or None, "within": {<run>: <agreement of its seeds>, ...}}`` (a run of
        one seed has no ``within`` entry).

    Raises:
        ConfigError: other classes, other samples or labels, or ``a`` alone with one seed.
    """
    ra = read_scored(a)
    runs, versus = [(str(a), ra)], None
    if b is not None:
        rb = read_scored(b)
        _same_classes(ra, rb, (str(a), str(b)))
        versus = agreement(ra.predictions, rb.predictions, class_names=ra.class_names, names=(str(a), str(b)))
        runs.append((str(b), rb))
    within = {name: agreement(run.predictions, class_names=run.class_names, names=(name, name))
              for name, run in runs if b is None or run.predictions["seed"].nunique() > 1}
    return {"versus": versus, "within": within}


def format_agreement_of_runs(agreed: dict[str, Any], run: str | Path, versus: str | Path | None) -> str:
    """:func:`agreement_of_runs`' result as one table: A against B first (when there is a B), then each run's own
    seeds, after a line naming A and B (for ``epir evaluate --agreement``).
    """
    rows: list[dict[str, Any]] = []
    labels: list[str] = []
    if agreed["versus"] is not None:
        rows.append(agreed["versus"])
        labels.append("A vs B")
    for path, row in agreed["within"].items():
        rows.append(row)
        labels.append("A's seeds" if path == str(run) else "B's seeds")
    legend = f"A = {run}" + (f", B = {versus}" if versus is not None else "")
    return f"{legend}\n{format_agreement(rows, labels)}"


def _paired(ra: ScoredRun, rb: ScoredRun, names: tuple[str, str], **bootstrap: Any) -> dict[str, Any]:
    """:func:`~epir.engine.uncertainty.paired_difference` of two read runs, after checking that their classes and
    absent-class policies agree; with each run's protocol and seeds.
    """
    a, b = names
    _same_classes(ra, rb, names)
    if ra.absent != rb.absent:
        raise ConfigError(f"{a} counts absent classes as {ra.absent!r} and {b} as {rb.absent!r}; compare runs with "
                          "the same eval.absent_class.")
    out = paired_difference(ra.predictions, rb.predictions, len(ra.class_names), absent=ra.absent, names=names,
                            **bootstrap)
    out["protocols"] = [ra.protocol, rb.protocol]
    out["seeds"] = [sorted(int(s) for s in r.predictions["seed"].unique()) for r in (ra, rb)]
    return out


def agreements(run_dirs: Mapping[str, str | Path], reference: str) -> dict[str, Any]:
    """Where every run but ``reference`` errs against ``reference`` (:func:`epir.engine.agreement.agreement`, each
    row named ``<run> vs <reference>``), and where the reference's own seeds err (None for a run of one seed): the
    ``agreement.json`` of ``epir compare``.

    Returns:
        ``{"reference", "versus": {<run>: <agreement>, ...}, "within": <agreement of the reference's seeds> | None}``.
    """
    runs = {name: read_run_dir(d) for name, d in run_dirs.items()}
    ref = runs[reference]
    versus = {}
    for name, run in runs.items():
        if name != reference:
            _same_classes(run, ref, (name, reference))
            versus[name] = agreement(run.predictions, ref.predictions, class_names=ref.class_names,
                                     names=(name, reference))
    within = (agreement(ref.predictions, class_names=ref.class_names, names=(reference, reference))
              if ref.predictions["seed"].nunique() > 1 else None)
    return {"reference": reference, "versus": versus, "within": within}


def differences(run_dirs: Mapping[str, str | Path], reference: str) -> list[dict[str, Any]]:
    """Every run but ``reference`` minus ``reference``, as :func:`compare_runs` (``run_dirs`` maps a row's name, the
    name the result gives, to its run directory); empty when the runs hold a single subject (nothing to resample).

    The rows are one family of tests: beside each ``p_not_better``, ``p_holm`` is it adjusted by Holm's step-down
    over the family (per metric; :func:`~epir.engine.uncertainty.holm`), the figure to read when any arm of several
    is asked to beat the reference.
    """
    runs = {name: read_run_dir(d) for name, d in run_dirs.items()}
    ref = runs[reference]
    if ref.predictions["subject"].nunique() < 2:  # one held-out subject: nothing to resample
        return []
    rows = [_paired(run, ref, (name, reference)) for name, run in runs.items() if name != reference]
    for key in ("uf1", "uar"):
        for row, adjusted in zip(rows, holm([row[key]["p_not_better"] for row in rows])):
            row[key]["p_holm"] = adjusted
    return rows


__all__ = ["ScoredRun", "agreement_of_runs", "agreements", "compare_runs", "differences", "evaluate_megc_log",
           "evaluate_run_dir", "format_agreement_of_runs", "read_log", "read_run_dir", "read_scored"]
