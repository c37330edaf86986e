"""How far a LOSO score could move with other subjects: subject-level bootstrap intervals and paired differences.

A LOSO score is pooled over a few dozen subjects, and the samples of one subject are not independent of each other
(the same face, the same session, often the same emotion). So the unit resampled here is the **subject**: a
bootstrap resample draws as many subjects as the run has, with replacement, pools all of their predictions, and
scores them as :func:`epir.engine.metrics.megc_scores` does (UF1 and UAR, with the run's absent-class policy). With
several seeds, a resample keeps the same subjects in every seed and its score is the mean over seeds, the figure a
run reports; the interval is therefore about the choice of subjects, not about the seeds (their spread is the
``_std`` figures).

- :func:`bootstrap_ci`: the percentile interval of UF1 and UAR (``level``, 95% by default) over ``resamples``
  resamples (:func:`scipy.stats.bootstrap`, ``method="percentile"``; ``method="bca"`` for the bias-corrected and
  accelerated interval, ``"basic"`` for the reverse percentile).
- :func:`paired_difference`: two runs over the same samples (two models, two recipes) resampled together: the
  interval of the difference A - B, and the share of resamples in which A does not beat B (a one-sided bootstrap
  p-value; small means A's lead is unlikely to come from which subjects happened to be held out).

The intervals say nothing of other flow sets, face crops or datasets: they are the spread of this benchmark over its
own subjects. A difference whose interval holds 0 is not a result.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from epir.engine.metrics import ABSENT_POLICIES, confusion_matrix
from epir.errors import ConfigError

#: Resamples of a bootstrap (2000: the interval's ends move by up to about 0.003 between generator seeds).
RESAMPLES = 2000
#: Confidence level of the intervals.
LEVEL = 0.95
#: How the interval is read from the resampled scores, by default.
METHOD = "percentile"
#: The interval methods offered, each with scipy.stats.bootstrap's name for it.
METHODS = {"percentile": "percentile", "basic": "basic", "bca": "BCa"}
#: Resamples scored at once (bounds memory: seeds x BATCH x subjects x K x K counts).
BATCH = 250
#: What one resample draws.
UNIT = "subject"
#: Columns a predictions table needs here (``source`` and ``clip`` are used when present).
COLUMNS = ("seed", "subject", "true", "predicted")


def check_predictions(predictions: pd.DataFrame, name: str) -> None:
    """ConfigError unless ``predictions`` is a run's predictions: the columns of :data:`COLUMNS`, some rows."""
    missing = [c for c in COLUMNS if c not in predictions.columns]
    if missing:
        raise ConfigError(f"{name} lacks column(s) {missing}; expected a run's predictions (predictions.csv: one row "
                          f"per seed and sample with {list(COLUMNS)}).")
    if predictions.empty:
        raise ConfigError(f"{name} has no rows; expected a run's predictions.")


def check_options(resamples: int, level: float, absent: str, method: str = METHOD) -> None:
    """ConfigError unless the bootstrap's settings are usable: at least 100 resamples, a level in [0.5, 1), a known
    absent-class policy and interval method.
    """
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 100:
        raise ConfigError(f"resamples must be a whole number >= 100 (a bootstrap of fewer is noise), got "
                          f"{resamples!r}.")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.5 <= level < 1:
        raise ConfigError(f"level must be a confidence level in [0.5, 1), e.g. 0.95, got {level!r}.")
    if absent not in ABSENT_POLICIES:
        raise ConfigError(f"absent-class policy {absent!r} is not one of {ABSENT_POLICIES}.")
    if method not in METHODS:
        raise ConfigError(f"interval method {method!r} is not one of {list(METHODS)} (percentile: the default; bca: "
                          f"bias-corrected and accelerated; basic: reverse percentile).")


def subject_of(predictions: pd.DataFrame) -> pd.Series:
    """The subject of each row, namespaced by its source when the table has one (``casme2/sub01``)."""
    subject = predictions["subject"].astype(str)
    if "source" in predictions.columns:
        sources = predictions["source"].astype(str)
        named = [s if s.startswith(f"{src}/") else f"{src}/{s}" for src, s in zip(sources, subject)]
        return pd.Series(named, index=predictions.index)
    return subject


def subject_counts(predictions: pd.DataFrame, num_classes: int,
                   subjects: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Confusion counts per seed and subject, shape (seeds, subjects, K, K), and the subjects in that order.

    Args:
        predictions: one row per (seed, sample): ``seed, subject, true, predicted`` (and ``source``).
        num_classes: K.
        subjects: the order of the subjects (default: first appearance); every subject must be in the table.
    """
    cluster = subject_of(predictions)
    order = list(dict.fromkeys(cluster)) if subjects is None else list(subjects)
    seeds = sorted(predictions["seed"].unique())
    counts = np.zeros((len(seeds), len(order), num_classes, num_classes), dtype=np.int64)
    position = {s: i for i, s in enumerate(order)}
    for (seed, subject), rows in predictions.groupby([predictions["seed"], cluster], sort=False):
        counts[seeds.index(seed), position[subject]] = confusion_matrix(rows["true"], rows["predicted"], num_classes)
    return counts, order


def scores_of_counts(cm: np.ndarray, absent: str = "skip") -> tuple[np.ndarray, np.ndarray]:
    """UF1 and UAR of confusion matrices (shape ``(..., K, K)``), vectorised; the absent-class policy as
    :func:`~epir.engine.metrics.megc_scores` (without its warning).
    """
    cm = cm.astype(float)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support = cm.sum(axis=-1)
    predicted = cm.sum(axis=-2)
    denom = support + predicted  # 2TP + FP + FN
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    keep = support > 0 if absent == "skip" else np.ones_like(support, dtype=bool)
    n_keep = keep.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        uf1 = np.where(keep, f1, 0).sum(axis=-1) / n_keep
        uar = np.where(keep, recall, 0).sum(axis=-1) / n_keep
    return uf1, uar


def _resampled(counts: np.ndarray, idx: np.ndarray, absent: str) -> np.ndarray:
    """Mean over seeds of UF1 and UAR of the subjects ``idx`` (shape (..., subjects)) pooled: shape (2, ...)."""
    pooled = counts[:, idx].sum(axis=-3)  # (seeds, ..., K, K)
    return np.stack(scores_of_counts(pooled, absent)).mean(axis=1)


def subject_bootstrap(statistic: Any, n_subjects: int, resamples: int, level: float, seed: int, method: str) -> Any:
    """:func:`scipy.stats.bootstrap` over subject indices 0..n_subjects-1: ``statistic(idx, axis=-1)`` gets resampled
    index arrays (shape (..., n_subjects)) and returns one row per figure (shape (figures, ...)). The generator is
    seeded with ``seed``; ``method`` is a key of :data:`METHODS`.
    """
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        # BCa where the jackknife has no spread (every subject scores alike) gives NaN ends and scipy's warning;
        # interval_of falls back to the percentile interval
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        return stats.bootstrap((np.arange(n_subjects),), statistic, n_resamples=resamples, vectorized=True, axis=-1,
                               batch=BATCH, confidence_level=level, method=METHODS[method],
                               rng=np.random.default_rng(seed))


def interval_of(result: Any, i: int, level: float) -> list[float]:
    """The interval of the ``i``-th figure of a :func:`subject_bootstrap` (0: UF1, 1: UAR for the scores). Where BCa
    cannot correct (its jackknife has no spread, e.g. every subject scores alike) scipy gives NaN ends: the percentile
    interval of the same resamples stands in (one value when they all score the same).
    """
    ci = result.confidence_interval
    low, high = float(ci.low[i]), float(ci.high[i])
    if not (np.isfinite(low) and np.isfinite(high)):
        tail = (1 - level) / 2 * 100
        low, high = (float(v) for v in np.percentile(result.bootstrap_distribution[i], [tail, 100 - tail]))
    return [low, high]  # full precision: rounded where printed, once


def bootstrap_ci(predictions: pd.DataFrame, num_classes: int, *, absent: str = "skip", resamples: int = RESAMPLES,
                 level: float = LEVEL, seed: int = 0, method: str = METHOD) -> dict[str, Any] | None:
    """Subject-bootstrap interval of a run's UF1 and UAR (the mean over seeds).

    Args:
        predictions: one row per (seed, sample): ``seed, subject, true, predicted`` (``source`` namespaces subjects).
        num_classes: number of classes.
        absent: absent-class policy, as the run's.
        resamples: bootstrap resamples (at least 100).
        level: confidence level.
        seed: the resampling generator's seed (the interval is reproducible).
        method: ``percentile`` (default), ``bca`` (bias-corrected and accelerated: adds a jackknife over the
            subjects) or ``basic``.

    Returns:
        ``{"uf1": [low, high], "uar": [low, high], "level", "resamples", "method", "unit", "subjects", "seed"}``, or
        None when there are fewer than 2 subjects (nothing to resample).
    """
    samples(predictions)  # one row per seed and sample, every seed over the same ones
    check_options(resamples, level, absent, method)
    counts, subjects = subject_counts(predictions, num_classes)
    if len(subjects) < 2:
        return None
    res = subject_bootstrap(lambda idx, axis=-1: _resampled(counts, idx, absent), len(subjects), resamples, level,
                            seed, method)
    return {"uf1": interval_of(res, 0, level), "uar": interval_of(res, 1, level), "level": level,
            "resamples": resamples, "method": method, "unit": UNIT, "subjects": len(subjects), "seed": seed}


def sample_index(predictions: pd.DataFrame) -> pd.MultiIndex:
    """Each row's sample as (subject, clip): the subject namespaced as :func:`subject_of`'s, the clip the table's
    ``clip`` or, without one, the row's place among its seed's rows of that subject.
    """
    subject = subject_of(predictions)
    clip = (predictions["clip"].astype(str) if "clip" in predictions.columns
            else predictions.groupby([predictions["seed"], subject]).cumcount().astype(str))
    return pd.MultiIndex.from_arrays([subject.to_numpy(), clip.to_numpy()], names=["subject", "clip"])


def samples(predictions: pd.DataFrame, name: str = "predictions") -> pd.Series:
    """The true label of each sample, indexed by (subject, clip) (:func:`sample_index`) and sorted, after checking
    that each seed holds each sample once and every seed the same samples with the same labels.

    Raises:
        ConfigError: a sample twice under one seed, or a seed over other samples or labels than the first seed's,
            naming the seed and the sample.
    """
    check_predictions(predictions, name)
    true = pd.Series(predictions["true"].to_numpy(), index=sample_index(predictions))
    seeds = predictions["seed"].to_numpy()
    twice = pd.MultiIndex.from_arrays([seeds, *(true.index.get_level_values(i) for i in (0, 1))]).duplicated()
    if twice.any():
        i = int(np.flatnonzero(twice)[0])
        raise ConfigError(f"{name} holds sample {'/'.join(true.index[i])} twice under seed {seeds[i]}; expected one "
                          "row per seed and sample (a run's predictions.csv).")
    first_seed = seeds.min()
    first = true[seeds == first_seed].sort_index()
    for seed in sorted(set(seeds.tolist()) - {first_seed}):
        other = true[seeds == seed].sort_index()
        if not other.index.equals(first.index):
            only = sorted(set(other.index) ^ set(first.index))[0]
            raise ConfigError(f"{name}: seed {seed} has {len(other)} samples and seed {first_seed} {len(first)}, not "
                              f"the same ones (e.g. {'/'.join(only)} is in one only); expected every seed over the "
                              "same samples (a finished run's predictions.csv).")
        differ = first.index[first.to_numpy() != other.to_numpy()]
        if len(differ):
            raise ConfigError(f"{name}: seed {seed} gives some samples other true labels than seed {first_seed} "
                              f"(e.g. {'/'.join(differ[0])}: {other[differ[0]]} against {first[differ[0]]}); expected "
                              "the same labels in every seed (a run's predictions.csv, unedited).")
    return first


def same_samples(a: pd.DataFrame, b: pd.DataFrame, name_a: str, name_b: str) -> list[str]:
    """The subjects of two runs after checking they hold the same samples with the same labels (else ConfigError)."""
    sa, sb = samples(a, name_a), samples(b, name_b)
    if not sa.index.equals(sb.index):
        only = sorted(set(sa.index) ^ set(sb.index))
        raise ConfigError(f"{name_a} has {len(sa)} samples and {name_b} {len(sb)}, not the same ones (e.g. "
                          f"{'/'.join(map(str, only[0]))} is in one only); compare runs on the same dataset and folds.")
    differ = sa.index[sa.to_numpy() != sb.to_numpy()]
    if len(differ):
        raise ConfigError(f"{name_a} and {name_b} give sample {'/'.join(map(str, differ[0]))} other true labels; "
                          f"compare runs with the same labels (--labels, the same dataset version).")
    return list(dict.fromkeys(sa.index.get_level_values(0)))


def paired_difference(a: pd.DataFrame, b: pd.DataFrame, num_classes: int, *, absent: str = "skip",
                      resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0,
                      names: tuple[str, str] = ("A", "B"), method: str = METHOD) -> dict[str, Any]:
    """A - B on the same samples, resampling subjects together: the difference and its interval, for UF1 and UAR.

    The two runs may have other seeds (each is averaged over its own) but must cover the same samples with the same
    labels: the same dataset and folds. ``method`` reads the interval as :func:`bootstrap_ci` does; ``p_not_better``
    is read off the resampled differences whatever the method.

    Returns:
        ``{"uf1": {"a", "b", "difference", "ci": [low, high], "p_not_better"}, "uar": {...}, "level", "resamples",
        "method", "unit", "subjects", "seed"}``; ``p_not_better`` is the share of resamples in which A's score is not
        above B's.

    Raises:
        ConfigError: a table without the columns, the runs on other samples or labels, or bad options.
    """
    c = paired_contrast([a, b], [1.0, -1.0], num_classes, absent=absent, resamples=resamples, level=level, seed=seed,
                        names=names, method=method)
    out: dict[str, Any] = {}
    for key in ("uf1", "uar"):
        point_a, point_b = c[key]["scores"]
        out[key] = {"a": point_a, "b": point_b, "difference": c[key]["value"], "ci": c[key]["ci"],
                    "p_not_better": c[key]["p_not_above"]}
    return {**out, "names": list(names), "level": level, "resamples": resamples, "method": method, "unit": UNIT,
            "subjects": c["subjects"], "seed": seed}


def paired_contrast(tables: Sequence[pd.DataFrame], weights: Sequence[float], num_classes: int, *,
                    absent: str = "skip", resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0,
                    names: Sequence[str] | None = None, method: str = METHOD) -> dict[str, Any]:
    """A weighted sum of several runs' scores over the same samples, ``sum_i weights[i] * score(tables[i])``,
    resampling subjects together (every run keeps the same subjects in a resample): its value and interval, for UF1
    and UAR. Weights ``(1, -1)`` give A - B (:func:`paired_difference`); ``(1, -1, -1, 1)`` over ``(A1, A2, B1, B2)``
    a difference of differences, (A1 - A2) - (B1 - B2): e.g. how much more one model gains from more training
    subjects than another does (``benchmarks/learning_curve.py``).

    Returns:
        ``{"uf1": {"value", "ci": [low, high], "p_not_above", "scores": [each run's]}, "uar": {...}, "names",
        "weights", "level", "resamples", "method", "unit", "subjects", "seed"}``; ``p_not_above`` is the share of
        resamples in which the sum is not above 0.

    Raises:
        ConfigError: fewer than two runs, a weight per run missing, the runs on other samples or labels, or bad
            options.
    """
    names = list(names) if names is not None else [f"run {i + 1}" for i in range(len(tables))]
    if len(tables) < 2 or len(weights) != len(tables) or len(names) != len(tables):
        raise ConfigError(f"a paired contrast needs two or more runs with a weight and a name each; got "
                          f"{len(tables)} runs, {len(weights)} weights and {len(names)} names.")
    check_options(resamples, level, absent, method)
    for table, name in zip(tables[1:], names[1:]):  # each table's columns and seeds checked there
        subjects = same_samples(tables[0], table, names[0], name)
    if len(subjects) < 2:
        raise ConfigError(f"{' and '.join(names)} cover {len(subjects)} subject; a paired bootstrap needs at least 2.")
    counts = [subject_counts(t, num_classes, subjects)[0] for t in tables]
    w = [float(v) for v in weights]

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        total = w[0] * _resampled(counts[0], idx, absent)
        for wi, ci in zip(w[1:], counts[1:]):
            total = total + wi * _resampled(ci, idx, absent)
        return total

    res = subject_bootstrap(statistic, len(subjects), resamples, level, seed, method)
    everyone = np.arange(len(subjects))
    value = statistic(everyone)  # the sum on the subjects as drawn
    points = [_resampled(ci, everyone, absent) for ci in counts]
    out: dict[str, Any] = {}
    for i, key in enumerate(("uf1", "uar")):
        out[key] = {"value": float(value[i]), "ci": interval_of(res, i, level),
                    "p_not_above": float(np.mean(res.bootstrap_distribution[i] <= 0)),
                    "scores": [float(p[i]) for p in points]}
    return {**out, "names": names, "weights": w, "level": level, "resamples": resamples, "method": method,
            "unit": UNIT, "subjects": len(subjects), "seed": seed}


def subject_differences(a: pd.DataFrame, b: pd.DataFrame, *, names: tuple[str, str] = ("A", "B")) -> dict[str, Any]:
    """Where two runs over the same samples differ, subject by subject: each subject's accuracy under A and B (the
    mean over each run's seeds), A - B, and how many subjects A wins, loses and ties, with the two-sided sign test
    of wins against losses (:func:`scipy.stats.binomtest`; ties left out). Error analysis beside
    :func:`paired_difference`: which held-out subjects a lead comes from, and whether it is broad or a few subjects.

    Returns:
        ``{"names", "subjects": [{"subject", "n", "a", "b", "difference"}, ...] (largest A - B first), "wins",
        "losses", "ties", "sign_test_p"}`` (``sign_test_p`` is 1.0 when every subject ties).

    Raises:
        ConfigError: a table without the columns, or the runs on other samples or labels.
    """
    name_a, name_b = names
    same_samples(a, b, name_a, name_b)  # each table's columns and seeds checked there

    def accuracy(df: pd.DataFrame) -> pd.DataFrame:
        right = (df["true"] == df["predicted"]).groupby([df["seed"], subject_of(df)]).agg(["mean", "size"])
        per_subject = right.groupby(level=1)
        return pd.DataFrame({"acc": per_subject["mean"].mean(), "n": per_subject["size"].first()})

    acc_a, acc_b = accuracy(a), accuracy(b)
    gap = {str(s): round(float(acc_a.at[s, "acc"] - acc_b.at[s, "acc"]), 4) for s in acc_a.index}
    order = sorted(gap, key=lambda s: (-gap[s], s))
    rows: list[dict[str, Any]] = [
        {"subject": s, "n": int(acc_a.at[s, "n"]), "a": round(float(acc_a.at[s, "acc"]), 4),
         "b": round(float(acc_b.at[s, "acc"]), 4), "difference": gap[s]} for s in order]
    wins = sum(g > 0 for g in gap.values())
    losses = sum(g < 0 for g in gap.values())
    p = float(stats.binomtest(wins, wins + losses).pvalue) if wins + losses else 1.0
    return {"names": [name_a, name_b], "subjects": rows, "wins": wins, "losses": losses,
            "ties": len(rows) - wins - losses, "sign_test_p": round(p, 4)}


def format_subject_differences(result: dict[str, Any], most: int = 10) -> str:
    """The subjects where A and B differ most, each way, and the win/loss count (for the CLI)."""
    a, b = result["names"]
    rows = result["subjects"]
    lines = [f"Per subject (accuracy, mean over seeds): {a} better on {result['wins']}, worse on "
             f"{result['losses']}, level on {result['ties']} of {len(rows)} subjects; sign test p = "
             f"{result['sign_test_p']:.3f}",
             f"  {'subject':<16} {'n':>4} {'A':>7} {'B':>7} {'A - B':>7}"]
    shown = [r for r in rows if r["difference"] > 0][:most] + [r for r in rows if r["difference"] < 0][-most:]
    for r in shown:
        lines.append(f"  {r['subject']:<16} {r['n']:>4} {r['a']:>7.3f} {r['b']:>7.3f} {r['difference']:>+7.3f}")
    if len(shown) < result["wins"] + result["losses"]:
        lines.append(f"  (the {most} largest each way; --json lists every subject)")
    return "\n".join(lines)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (valid whatever their dependence): the i-th smallest is
    multiplied by (m - i), kept at least as large as the one before and capped at 1. A family of one is unchanged.
    scipy offers only false-discovery control (``scipy.stats.false_discovery_control``), not this family-wise one.
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
        raise ConfigError(f"holm() expects a list of p-values in [0, 1], got {list(p_values)!r}.")
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, p[order] * (len(p) - np.arange(len(p))))
    adjusted = np.empty_like(p)
    adjusted[order] = np.maximum.accumulate(scaled)
    return [round(float(v), 4) for v in adjusted]


def format_interval(ci: Sequence[float] | None) -> str:
    """``[low, high]`` at 3 decimals, or ``-`` when there is none (a source of one subject, an older run)."""
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci is not None else "-"


def describe_ci(meta: dict[str, Any]) -> str:
    """How the intervals of a ``results.json`` were computed (its ``ci`` entry), in a few words."""
    return (f"subject bootstrap ({meta.get('method', METHOD)}, {meta.get('resamples')} resamples of "
            f"{meta.get('subjects')} subjects)")


def format_difference(result: dict[str, Any]) -> str:
    """A few lines: A - B on UF1 and UAR with the interval and p_not_better (for the CLI and benchmarks)."""
    a, b = result["names"]
    pct = f"{result['level']:.0%}"
    lines = [f"{a} - {b}, paired subject bootstrap ({result['subjects']} subjects, {result['resamples']} resamples):"]
    for key in ("uf1", "uar"):
        r = result[key]
        lo, hi = r["ci"]
        verdict = "the interval holds 0: not a difference" if lo <= 0 <= hi else "the interval excludes 0"
        lines.append(f"  {key.upper()} {r['a']:.4f} - {r['b']:.4f} = {r['difference']:+.4f}  {pct} CI "
                     f"[{lo:+.4f}, {hi:+.4f}]  P({a} not better) {r['p_not_better']:.3f}  ({verdict})")
    return "\n".join(lines)


__all__ = ["COLUMNS", "LEVEL", "METHOD", "METHODS", "RESAMPLES", "UNIT", "bootstrap_ci", "check_options",
           "check_predictions", "describe_ci", "format_difference", "format_interval", "format_subject_differences",
           "holm", "interval_of", "paired_contrast", "paired_difference", "same_samples", "sample_index", "samples",
           "scores_of_counts", "subject_bootstrap", "subject_counts", "subject_differences", "subject_of"]
