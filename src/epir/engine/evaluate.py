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
    format_interval,
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
    """Each part that two runs both have, A - B (:func:`compare_runs` of :func:`read_parts`' ``model``, ``teacher``
    and ``member <k>``): which part made the runs differ, e.g. the same students with teachers trained otherwise.
    The rows are named ``<run> <part>``.

    Raises:
        ConfigError: runs without a part in common (a teacher or ensemble members), or anything :func:`compare_runs`
            refuses, for any part.
    """
    pa, pb = read_parts(a), read_parts(b)
    common = [part for part in pa if part in pb]
    if not common:
        raise ConfigError(f"{a} and {b} have no part in common ({', '.join(pa)} against {', '.join(pb)}); --parts "
                          "compares the same part of two runs: give two teacher runs, or two runs of in-fold "
                          "ensembles.")
    return {part: _paired(pa[part], pb[part], (f"{a} {part}", f"{b} {part}"), resamples=resamples, level=level,
                          seed=seed, method=method) for part in common}


def same_classes(ra: ScoredRun, rb: ScoredRun, names: tuple[str, str]) -> None:
    """ConfigError unless two read runs score the same classes."""
    a, b = names
    if ra.class_names != rb.class_names:
        raise ConfigError(f"{a} scores classes {ra.class_names} and {b} {rb.class_names}; compare runs of the same "
                          "classes (the same --labels).")


#: Where a fold file keeps each part's own probabilities (the model's: ``probs`` where the fold's weight was 0; each
#: member's of an in-fold ensemble, ``member <k>``: ``member_probs[k]``, fold files from round 31 on).
KEPT_AS = {"model": "model_probs", "teacher": "teacher_probs"}


def member_part(k: int) -> str:
    """The name :func:`read_parts` gives member ``k`` of the folds' in-fold ensembles: ``member <k>``."""
    return f"member {k}"


def read_parts(run_dir: str | Path) -> dict[str, ScoredRun]:
    """The parts of a run, each as a run of its own, read from the run's fold files: where it blends a teacher into
    its predictions (``train.distill`` with ``train.distill_mix`` > 0, or chosen in the fold), ``"model"`` (the
    model alone, before the blend: ``model_probs``, or ``probs`` where the fold's weight was 0) and ``"teacher"`` (the
    fold's teacher alone: ``teacher_probs``); where its folds are in-fold ensembles (``train.ensemble`` > 1) whose fold
    files keep each member's probabilities (``member_probs``, written from round 31 on), ``"member 0"``,
    ``"member 1"``, ... (each member alone, before the members' mean and the teacher's blend). Each is a table with
    one row per seed and sample, ``seed, subject, clip, true, predicted``, the part's ``prob_<class>`` columns and
    ``source`` (the subject's source dataset), as ``predictions.csv``.

    Raises:
        ConfigError: a run with neither a teacher nor an ensemble's members, a fold file that does not keep a part's
            probabilities (a blend written before round 17, or damaged; of a run with members and no teacher, one
            written before round 31), or fold files over other samples or labels than the run's predictions.csv.
        DatasetNotFoundError: not a finished run directory, or a fold file missing.
    """
    run = read_run_dir(run_dir)
    path = Path(run_dir) / "config.yaml"
    cfg = RunConfig.load(path) if path.is_file() else None
    if cfg is None or (not cfg.train.distill and cfg.train.ensemble < 2):
        raise ConfigError(f"{run_dir} has no teacher (its config.yaml sets no train.distill) and no in-fold ensemble "
                          "(train.ensemble is 1); the parts of a run are its model and the teacher blended into its "
                          "predictions, or its ensemble's members: give a run of a teacher recipe, e.g. the EPIR "
                          "default, or of train.ensemble >= 2.")
    taught, n_members = bool(cfg.train.distill), cfg.train.ensemble
    mixes = candidate_mixes(cfg)
    records = []
    folds = run.predictions[["seed", "subject"]].drop_duplicates().itertuples(index=False)
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
        records.append((file, rec))
    # the members are parts where every fold kept them (a run resumed over older folds may not have)
    with_members = n_members > 1 and all(isinstance(r.get("member_probs"), list) for _, r in records)
    if not taught and not with_members:
        first = next((f for f, r in records if not isinstance(r.get("member_probs"), list)), None)
        raise ConfigError(f"{first} does not keep its ensemble members' own probabilities (member_probs; fold files "
                          "written before round 31 keep only their mean): run the fold again to read the members.")
    names = ([*KEPT_AS] if taught else []) + ([member_part(k) for k in range(n_members)] if with_members else [])
    kept: dict[str, list[Any]] = {name: [] for name in names}
    k = len(run.class_names)
    for file, rec in records:
        parts = {"model": model_probs_of(rec, mixes, cfg), "teacher": rec.get("teacher_probs")} if taught else {}
        if with_members:
            members = rec["member_probs"]
            parts.update({member_part(m): members[m] if m < len(members) else None for m in range(n_members)})
        for part, probs in parts.items():
            array = np.asarray(probs if probs is not None else [], dtype=float)
            if probs is None or array.shape != (len(rec["true"]), k) or len(rec.get("clips") or rec["true"]) != \
                    len(rec["true"]) or first_bad_probability_row(array, array.argmax(axis=1)) is not None:
                where = (f"{KEPT_AS[part]}; folds written before round 17 keep only the blend" if part in KEPT_AS
                         else "member_probs; folds written before round 31 keep only the members' mean")
                raise ConfigError(f"{file} does not keep the {part}'s own probabilities for its "
                                  f"{len(rec['true'])} samples ({where}): run the fold again to compare the parts.")
            kept[part].append(array)
    plain = [rec for _, rec in records]
    sources = run.predictions.drop_duplicates("subject").set_index("subject")["source"]

    def part_rows(probs: list[Any]) -> pd.DataFrame:  # a part's predictions, each subject's source as predictions.csv's
        rows = part_table(plain, probs, run.class_names)
        return rows.assign(source=rows["subject"].map(sources))

    out = {part: ScoredRun(part_rows(probs), run.class_names, run.protocol, run.absent, run.evaluation)
           for part, probs in kept.items()}
    try:  # the fold files are the run's own: the samples and labels of its predictions.csv, seed by seed
        table = out[names[0]].predictions
        for seed, rows in run.predictions.groupby("seed"):
            same_samples(table[table["seed"] == seed], rows, f"seed {seed}'s fold files", "predictions.csv")
    except ConfigError as e:
        raise ConfigError(f"{run_dir}: its fold files and its predictions.csv disagree ({e}); the directory mixes "
                          "runs: run it again with the same --out to rewrite both.") from None
    return out


def part_scores(run_dir: str | Path, *, resamples: int = RESAMPLES, level: float = LEVEL,
                method: str = METHOD) -> dict[str, dict[str, Any]]:
    """What each part of a run (:func:`read_parts`) scores alone on the run's held-out subjects: the metrics of
    :func:`evaluate_run_dir` (mean over seeds, spread, subject-bootstrap intervals) per part, keyed by part.
    """
    return {part: _summary(run, run.absent, resamples, level, method) for part, run in read_parts(run_dir).items()}


def format_part_scores(scored: Mapping[str, dict[str, Any]], run: str | Path) -> str:
    """:func:`part_scores` as one table, a row per part: UF1 and UAR (mean ± spread over seeds) with their
    intervals (for ``epir evaluate RUN --parts``).
    """
    width = max(len(p) for p in scored)
    lines = [f"Each part of {run} alone (mean ± spread over seeds; [the subject-bootstrap interval]):",
             f"  {'part':<{width}}  {'UF1':>30}  {'UAR':>30}"]
    for part, results in scored.items():
        cells = []
        for key in ("uf1", "uar"):
            ci = results.get(f"{key}_ci")
            interval = f" {format_interval(ci)}" if ci is not None else ""
            cells.append(f"{results[key]:.4f} ± {results.get(f'{key}_std', 0.0):.4f}{interval}")
        lines.append(f"  {part:<{width}}  {cells[0]:>30}  {cells[1]:>30}")
    return "\n".join(lines)


def part_pairs(parts: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The pairs of a run's parts (:func:`read_parts`' names) read against each other: the model against its
    teacher, and each member from member 1 on against member 0.
    """
    pairs = [("model", "teacher")] if "teacher" in parts else []
    members = [p for p in parts if p.startswith("member ")]
    return pairs + [(m, members[0]) for m in members[1:]]


def agreement_of_runs(a: str | Path, b: str | Path | None = None, *, parts: bool = False,
                      **bootstrap: Any) -> dict[str, Any]:
    """Where two finished runs (run directories or MEGC2019 logs) err over the same samples, beside where each run's
    own seeds err (:func:`epir.engine.agreement.agreement`); with ``b`` None, the seeds of ``a`` alone; with
    ``parts``, the parts of run ``a`` against each other (:func:`read_parts`, :func:`part_pairs`): its model against
    the teacher blended into its predictions, and each member of its in-fold ensembles against member 0.
    ``bootstrap`` (``resamples``, ``level``, ``seed``) sets Q's interval.

    Returns:
        ``{"versus": <agreement of a and b> or None, "within": {<run>: <agreement of its seeds>, ...}}`` (a run of
        one seed has no ``within`` entry); with ``parts`` the runs are named ``<a> <part>``, ``versus`` is the first
        pair (the model against the teacher where there is one), ``within`` is that pair's parts' seeds, and
        ``more`` holds the agreement of each further pair, named by the parts alone (``["member 1", "member
        0"]``; ``[]`` where there is none).

    Raises:
        ConfigError: other classes, other samples or labels, ``a`` alone with one seed, ``parts`` with ``b``, or
            ``parts`` of a run without a teacher or members.
    """
    more: list[dict[str, Any]] = []
    if parts:
        if b is not None:
            raise ConfigError("--parts compares a run's own parts with each other; give one run, without --versus.")
        read = read_parts(a)
        pairs = part_pairs(read)
        first, second = pairs[0]
        runs = [(f"{a} {first}", read[first]), (f"{a} {second}", read[second])]
        for one, other in pairs[1:]:
            same_classes(read[one], read[other], (f"{a} {one}", f"{a} {other}"))
            more.append(agreement(read[one].predictions, read[other].predictions, class_names=read[one].class_names,
                                  names=(one, other), **bootstrap))
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
    out: dict[str, Any] = {"versus": versus, "within": within}
    if parts:
        out["more"] = more
    return out


def format_agreement_of_runs(agreed: dict[str, Any]) -> str:
    """:func:`agreement_of_runs`' result as one table: A against B first (when there is a B), then each run's own
    seeds, then any further pair of a run's parts (``more``, ``member 1 vs member 0``), after a line naming A and B (for
    ``epir evaluate --agreement``).
    """
    names = list(agreed["within"]) if agreed["versus"] is None else agreed["versus"]["names"]
    more = list(agreed.get("more") or ())
    rows = ([] if agreed["versus"] is None else [agreed["versus"]]) + list(agreed["within"].values()) + more
    labels = ([] if agreed["versus"] is None else ["A vs B"]) + [
        "A's seeds" if name == names[0] else "B's seeds" for name in agreed["within"]] + [
        " vs ".join(r["names"]) for r in more]
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
           "evaluate_megc_log", "evaluate_run_dir", "format_agreement_of_runs", "format_part_scores", "member_part",
           "part_pairs", "part_scores",
           "read_log", "read_parts", "read_run_dir", "read_scored", "same_classes"]
