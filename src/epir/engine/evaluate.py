"""Recompute metrics from a run directory's predictions or from a MEGC2019 submission log, and compare two of them."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from epir.config import RunConfig
from epir.data.base import COMPOSITE_CLASSES
from epir.engine.agreement import agreement, format_agreement
from epir.engine.cost import candidate_mixes
from epir.engine.loso import evaluation_of, model_probs_of, part_table
from epir.engine.records import FoldRecord, first_bad_probability_row
from epir.engine.results import ORACLE, UNKNOWN, read_megc_log, read_megc_log_meta, read_predictions, summarize
from epir.engine.runstore import fold_file
from epir.engine.uncertainty import (
    LEVEL,
    METHOD,
    RESAMPLES,
    holm,
    paired_difference,
    same_samples,
    subject_differences,
)
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


def compare_parts(a: str | Path, b: str | Path, *, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0,
                  method: str = METHOD) -> dict[str, dict[str, Any]]:
    """Each part of two blend runs, A - B (:func:`compare_runs` of :func:`read_parts`' ``model`` and ``teacher``):
    which part made the blends differ, e.g. the same students with teachers trained otherwise. The rows are named
    ``<run> model`` and ``<run> teacher``.

    Raises:
        ConfigError: a run without a teacher, or anything :func:`compare_runs` refuses, for either part.
    """
    pa, pb = read_parts(a), read_parts(b)
    return {part: _paired(pa[part], pb[part], (f"{a} {part}", f"{b} {part}"), resamples=resamples, level=level,
                          seed=seed, method=method) for part in ("model", "teacher")}


def same_classes(ra: ScoredRun, rb: ScoredRun, names: tuple[str, str]) -> None:
    """ConfigError unless two read runs score the same classes."""
    a, b = names
    if ra.class_names != rb.class_names:
        raise ConfigError(f"{a} scores classes {ra.class_names} and {b} {rb.class_names}; compare runs of the same "
                          "classes (the same --labels).")


#: Where a fold file keeps each part's own probabilities (the model's: ``probs`` where the fold's weight was 0).
KEPT_AS = {"model": "model_probs", "teacher": "teacher_probs"}


def read_parts(run_dir: str | Path) -> dict[str, ScoredRun]:
    """The two parts of a run that blends a teacher into its predictions (``train.distill`` with
    ``train.distill_mix`` > 0, or chosen in the fold), each as a run of its own: ``{"model": <the model alone, before
    the blend>, "teacher": <the fold's teacher alone>}``, read from the run's fold files (their ``model_probs``, or
    ``probs`` where the fold's weight was 0, and ``teacher_probs``): one row per seed and sample with ``seed, subject,
    clip, true, predicted`` and the part's ``prob_<class>`` columns, as ``predictions.csv``.

    Raises:
        ConfigError: a run without a teacher, a fold file that does not keep both parts' probabilities (written
            before round 17, or damaged), or fold files over other samples or labels than the run's predictions.csv.
        DatasetNotFoundError: not a finished run directory, or a fold file missing.
    """
    run = read_run_dir(run_dir)
    path = Path(run_dir) / "config.yaml"
    cfg = RunConfig.load(path) if path.is_file() else None
    if cfg is None or not cfg.train.distill:
        raise ConfigError(f"{run_dir} has no teacher (its config.yaml sets no train.distill); the parts of a run are "
                          "its model and the teacher blended into its predictions: give a run of a teacher recipe, "
                          "e.g. the EPIR default.")
    mixes = candidate_mixes(cfg)
    kept: dict[str, list[Any]] = {"model": [], "teacher": []}
    records = []
    folds = run.predictions[["seed", "subject"]].drop_duplicates().itertuples(index=False)
    k = len(run.class_names)
    for seed, subject in folds:
        file = fold_file(Path(run_dir), int(seed), str(subject))
        if not file.is_file():
            raise DatasetNotFoundError(f"{file} does not exist; the run's fold files are where its parts' "
                                       "predictions are kept (run it again with the same --out to rewrite them).")
        try:
            rec = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"{file}: not a readable fold record ({type(e).__name__}: {e}).") from None
        FoldRecord.from_json(rec, str(file))  # its keys and their types, or a ConfigError naming the file
        parts = {"model": model_probs_of(rec, mixes, cfg), "teacher": rec.get("teacher_probs")}
        for part, probs in parts.items():
            array = np.asarray(probs if probs is not None else [], dtype=float)
            if probs is None or array.shape != (len(rec["true"]), k) or len(rec.get("clips") or rec["true"]) != \
                    len(rec["true"]) or first_bad_probability_row(array, array.argmax(axis=1)) is not None:
                raise ConfigError(f"{file} does not keep the {part}'s own probabilities for its "
                                  f"{len(rec['true'])} samples ({KEPT_AS[part]}; folds written before round 17 keep "
                                  "only the blend): run the fold again to compare the parts.")
            kept[part].append(array)
        records.append(rec)
    out = {part: ScoredRun(part_table(records, probs, run.class_names), run.class_names, run.protocol, run.absent,
                           run.evaluation) for part, probs in kept.items()}
    try:  # the fold files are the run's own: the samples and labels of its predictions.csv, seed by seed
        table = out["model"].predictions
        for seed, rows in run.predictions.groupby("seed"):
            same_samples(table[table["seed"] == seed], rows, f"seed {seed}'s fold files", "predictions.csv")
    except ConfigError as e:
        raise ConfigError(f"{run_dir}: its fold files and its predictions.csv disagree ({e}); the directory mixes "
                          "runs: run it again with the same --out to rewrite both.") from None
    return out


def agreement_of_runs(a: str | Path, b: str | Path | None = None, *, parts: bool = False,
                      **bootstrap: Any) -> dict[str, Any]:
    """Where two finished runs (run directories or MEGC2019 logs) err over the same samples, beside where each run's
    own seeds err (:func:`epir.engine.agreement.agreement`); with ``b`` None, the seeds of ``a`` alone; with
    ``parts``, the model of run ``a`` against the teacher blended into its predictions (:func:`read_parts`).
    ``bootstrap`` (``resamples``, ``level``, ``seed``) sets Q's interval.

    Returns:
        ``{"versus": <agreement of a and b> or None, "within": {<run>: <agreement of its seeds>, ...}}`` (a run of
        one seed has no ``within`` entry); with ``parts`` the runs are named ``<a> model`` and ``<a> teacher``.

    Raises:
        ConfigError: other classes, other samples or labels, ``a`` alone with one seed, ``parts`` with ``b``, or
            ``parts`` of a run without a teacher.
    """
    if parts:
        if b is not None:
            raise ConfigError("--parts compares a run's own model and teacher; give one run, without --versus.")
        both = read_parts(a)
        runs = [(f"{a} model", both["model"]), (f"{a} teacher", both["teacher"])]
    else:
        runs = [(str(a), read_scored(a))] + ([] if b is None else [(str(b), read_scored(b))])
    (name_a, ra), rest = runs[0], runs[1:]
    versus = None
    if rest:
        name_b, rb = rest[0]
        same_classes(ra, rb, (name_a, name_b))
        versus = agreement(ra.predictions, rb.predictions, class_names=ra.class_names, names=(name_a, name_b),
                           **bootstrap)
    within = {name: agreement(run.predictions, class_names=run.class_names, names=(name, name), **bootstrap)
              for name, run in runs if not rest or run.predictions["seed"].nunique() > 1}
    return {"versus": versus, "within": within}


def format_agreement_of_runs(agreed: dict[str, Any]) -> str:
    """:func:`agreement_of_runs`' result as one table: A against B first (when there is a B), then each run's own
    seeds, after a line naming A and B (for ``epir evaluate --agreement``).
    """
    names = list(agreed["within"]) if agreed["versus"] is None else agreed["versus"]["names"]
    rows = ([] if agreed["versus"] is None else [agreed["versus"]]) + list(agreed["within"].values())
    labels = ([] if agreed["versus"] is None else ["A vs B"]) + [
        "A's seeds" if name == names[0] else "B's seeds" for name in agreed["within"]]
    legend = ", ".join(f"{letter} = {name}" for letter, name in zip("AB", names))
    return f"{legend}\n{format_agreement(rows, labels)}"


def _paired(ra: ScoredRun, rb: ScoredRun, names: tuple[str, str], **bootstrap: Any) -> dict[str, Any]:
    """:func:`~epir.engine.uncertainty.paired_difference` of two read runs, after checking that their classes and
    absent-class policies agree; with each run's protocol and seeds.
    """
    a, b = names
    same_classes(ra, rb, names)
    if ra.absent != rb.absent:
        raise ConfigError(f"{a} counts absent classes as {ra.absent!r} and {b} as {rb.absent!r}; compare runs with "
                          "the same eval.absent_class.")
    out = paired_difference(ra.predictions, rb.predictions, len(ra.class_names), absent=ra.absent, names=names,
                            **bootstrap)
    out["protocols"] = [ra.protocol, rb.protocol]
    out["seeds"] = [sorted(int(s) for s in r.predictions["seed"].unique()) for r in (ra, rb)]
    return out


def _read_runs(runs: Mapping[str, str | Path | ScoredRun]) -> dict[str, ScoredRun]:
    """Each run directory read (:func:`read_run_dir`); a run already read is kept as it is."""
    return {name: r if isinstance(r, ScoredRun) else read_run_dir(r) for name, r in runs.items()}


def agreements(run_dirs: Mapping[str, str | Path | ScoredRun], reference: str) -> dict[str, Any]:
    """Where every run but ``reference`` errs against ``reference`` (:func:`epir.engine.agreement.agreement`, each
    row named ``<run> vs <reference>``), and where the reference's own seeds err (None for a run of one seed): the
    ``agreement.json`` of ``epir compare``. A run may be given already read (a :class:`ScoredRun`).

    Returns:
        ``{"reference", "versus": {<run>: <agreement>, ...}, "within": <agreement of the reference's seeds> | None}``.
    """
    runs = _read_runs(run_dirs)
    ref = runs[reference]
    versus = {}
    for name, run in runs.items():
        if name != reference:
            same_classes(run, ref, (name, reference))
            versus[name] = agreement(run.predictions, ref.predictions, class_names=ref.class_names,
                                     names=(name, reference))
    within = (agreement(ref.predictions, class_names=ref.class_names, names=(reference, reference))
              if ref.predictions["seed"].nunique() > 1 else None)
    return {"reference": reference, "versus": versus, "within": within}


def differences(run_dirs: Mapping[str, str | Path | ScoredRun], reference: str) -> list[dict[str, Any]]:
    """Every run but ``reference`` minus ``reference``, as :func:`compare_runs` (``run_dirs`` maps a row's name, the
    name the result gives, to its run directory, or to the run already read); empty when the runs hold a single
    subject (nothing to resample).

    The rows are one family of tests: beside each ``p_not_better``, ``p_holm`` is it adjusted by Holm's step-down
    over the family (per metric; :func:`~epir.engine.uncertainty.holm`), the figure to read when any arm of several
    is asked to beat the reference.
    """
    runs = _read_runs(run_dirs)
    ref = runs[reference]
    if ref.predictions["subject"].nunique() < 2:  # one held-out subject: nothing to resample
        return []
    rows = [_paired(run, ref, (name, reference)) for name, run in runs.items() if name != reference]
    for key in ("uf1", "uar"):
        for row, adjusted in zip(rows, holm([row[key]["p_not_better"] for row in rows])):
            row[key]["p_holm"] = adjusted
    return rows


__all__ = ["KEPT_AS", "ScoredRun", "agreement_of_runs", "agreements", "compare_parts", "compare_runs", "differences",
           "evaluate_megc_log", "evaluate_run_dir", "format_agreement_of_runs", "read_log", "read_parts",
           "read_run_dir", "read_scored", "same_classes"]
