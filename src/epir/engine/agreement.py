"""Where two runs err: on the same samples, or on different ones (how much a blend of the two could gain).

Averaging two models' probabilities helps only where one is right and the other wrong; where both are wrong, and
above all where both give the same wrong class, no blend recovers the sample. This module counts those cases for two
finished runs over the same samples (two models, a model and a teacher, two recipes), and for the seeds of one run
among themselves, the reference a second model has to beat to be worth blending with.

For each pair of seeds (one of A's with one of B's; for one run, every ordered pair of two of its seeds, so that its
"only A" and "only B" agree) each sample falls in one cell of a 2 x 2 table: both right, only A right, only B right,
both wrong. The figures are the shares of samples in each cell, the mean over the pairs of seeds (so a run of 3 seeds
against one of 1 averages 3 tables), and from that mean table:

- ``q``: Yule's Q statistic, ``(N11 N00 - N10 N01) / (N11 N00 + N10 N01)`` (Kuncheva and Whitaker, "Measures of
  diversity in classifier ensembles", Machine Learning 51, 2003): 1 when the two err on exactly the same samples,
  0 when their errors are independent, below 0 when each errs where the other is right. Lower is more diverse.
- ``disagreement``: only A right plus only B right, the samples a blend could move either way.
- ``same_error``: both wrong with the same predicted class (coincident failure): out of every blend's reach.
- ``ceiling``: the accuracy and UAR of an oracle that takes whichever of the two is right, ``1 - both_wrong`` and the
  mean over classes of that share within the class. **A bound, not a result**: it picks per sample with the true
  label, which nothing honest can do. It says how much room a blend has, not what it would score.

``q_ci`` is a subject-bootstrap interval of Q (:mod:`epir.engine.uncertainty`'s unit and defaults: subjects drawn
with replacement, every pair of seeds keeping the same subjects, the percentile interval): how far Q could move with
other subjects. Two Q's whose intervals overlap widely are not shown to differ; :func:`q_difference` reads two Q's
against the same run on the same resampled subjects (does A err more like C than B does?).

Per class, the same cells are given within each true class, since UF1 and UAR weigh the rare classes as much as the
common one. Nothing here is a score of either run; use :func:`epir.engine.uncertainty.paired_difference` for that.
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import permutations, product
from typing import Any

import numpy as np
import pandas as pd

from epir.engine.uncertainty import (
    LEVEL,
    RESAMPLES,
    check_options,
    interval_of,
    same_samples,
    sample_index,
    samples,
    subject_bootstrap,
)
from epir.errors import ConfigError

#: The cells of the 2 x 2 table, in the order the tables print them.
CELLS = ("both_right", "only_a", "only_b", "both_wrong")


def _predicted_by_seed(predictions: pd.DataFrame) -> pd.DataFrame:
    """The predicted class of each sample (rows, in :func:`~epir.engine.uncertainty.samples`' order) under each seed
    (columns), of a table that passed :func:`~epir.engine.uncertainty.samples`' checks (each seed over the same
    samples, once each).
    """
    keys = sample_index(predictions)
    index = pd.MultiIndex.from_arrays([predictions["seed"].to_numpy(), *(keys.get_level_values(i) for i in (0, 1))],
                                      names=["seed", "subject", "clip"])
    wide = pd.Series(predictions["predicted"].to_numpy(), index=index).unstack("seed")
    return wide.sort_index().astype(int)


def _yules_q(n11: Any, n10: Any, n01: Any, n00: Any) -> Any:
    """Yule's Q of 2 x 2 tables (counts or shares, arrays alike); NaN where it is undefined (an empty row pair)."""
    denom = n11 * n00 + n10 * n01
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (n11 * n00 - n10 * n01) / np.where(denom > 0, denom, 1), np.nan)


def _subject_sums(cells: Sequence[np.ndarray], subjects: np.ndarray) -> np.ndarray:
    """Each table's first four cells (both right, only A, only B, both wrong) summed over each subject's samples:
    shape (tables, subjects, 4), subjects in order of first appearance. Q is the same for a table's sums as for its
    shares, so a bootstrap resamples these rows.
    """
    codes, unique = pd.factorize(subjects)
    sums = np.zeros((len(cells), len(unique), 4))
    for i, per_sample in enumerate(cells):
        np.add.at(sums[i], codes, per_sample[:4].T)
    return sums


def _q_interval(per_sample: np.ndarray, subjects: np.ndarray, resamples: int, level: float,
                seed: int) -> list[float] | None:
    """Subject-bootstrap percentile interval of Q from each sample's expected cells (``per_sample``: (4+, samples));
    None for a single subject, or where a resample leaves Q undefined (e.g. one run right on every sample drawn).
    """
    sums = _subject_sums([per_sample], subjects)[0]
    if len(sums) < 2:  # one held-out subject: nothing to resample
        return None

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        return _yules_q(*np.moveaxis(sums[idx].sum(axis=-2), -1, 0))[None]

    result = subject_bootstrap(statistic, len(sums), resamples, level, seed, "percentile")
    if not np.isfinite(result.bootstrap_distribution).all():
        return None
    return interval_of(result, 0, level)


def _table(per_sample: np.ndarray, true: np.ndarray, num_classes: int, subjects: np.ndarray, resamples: int,
           level: float, seed: int) -> dict[str, Any]:
    """The 2 x 2 shares and the figures derived from them, from each sample's expected cells (:func:`_per_sample`).

    ``per_sample``: shape (5, samples); ``true`` and ``subjects``: shape (samples,).
    """
    share = per_sample.mean(axis=1)
    n11, n10, n01, n00 = share[:4]
    out: dict[str, Any] = {key: round(float(v), 6) for key, v in zip(CELLS, share[:4])}
    out["same_error"] = round(float(share[4]), 6)
    out["disagreement"] = round(float(n10 + n01), 6)
    q = float(_yules_q(n11, n10, n01, n00))
    out["q"] = round(q, 6) if np.isfinite(q) else None
    out["q_ci"] = _q_interval(per_sample, subjects, resamples, level, seed) if out["q"] is not None else None
    either = 1 - per_sample[3]
    present = [k for k in range(num_classes) if (true == k).any()]
    out["ceiling"] = {"accuracy": round(float(either.mean()), 6),
                      "uar": round(float(np.mean([either[true == k].mean() for k in present])), 6)}
    out["per_class"] = [{"class": k, "n": int((true == k).sum()),
                         **{key: round(float(v), 6) for key, v in
                            zip((*CELLS, "same_error"), per_sample[:, true == k].mean(axis=1))}}
                        for k in present]
    return out


def _per_sample(a: pd.DataFrame, b: pd.DataFrame | None, names: tuple[str, str]) -> dict[str, Any]:
    """Each sample's cells (both right, only A, only B, both wrong, the same wrong class), averaged over the pairs
    of seeds, shape (5, samples), samples in :func:`_predicted_by_seed`'s order; with their true classes, subjects,
    the number of pairs and each run's seeds. ``b`` None: the ordered pairs of ``a``'s own seeds.
    """
    name_a, name_b = names
    true_a = samples(a, name_a)
    wide_a = _predicted_by_seed(a)
    if b is None:
        if wide_a.shape[1] < 2:
            raise ConfigError(f"{name_a} has one seed ({wide_a.columns[0]}); agreement between a run's seeds needs at "
                              "least 2 (run it with --seeds 0 1 2), or compare it with another run.")
        wide_b, pairs = wide_a, list(permutations(range(wide_a.shape[1]), 2))
    else:
        same_samples(a, b, name_a, name_b)  # b's own checks too
        wide_b = _predicted_by_seed(b).loc[wide_a.index]
        pairs = list(product(range(wide_a.shape[1]), range(wide_b.shape[1])))
    true = true_a.loc[wide_a.index].to_numpy().astype(int)
    pa, pb = wide_a.to_numpy(), wide_b.to_numpy()
    cells = np.zeros((len(pairs), 5, len(true)))
    for i, (sa, sb) in enumerate(pairs):
        ra, rb = pa[:, sa] == true, pb[:, sb] == true
        cells[i] = [ra & rb, ra & ~rb, ~ra & rb, ~ra & ~rb, ~ra & ~rb & (pa[:, sa] == pb[:, sb])]
    seeds = [sorted(int(s) for s in wide_a.columns)] + ([] if b is None else [sorted(int(s) for s in wide_b.columns)])
    return {"cells": cells.mean(axis=0), "true": true, "subjects": wide_a.index.get_level_values("subject").to_numpy(),
            "pairs": len(pairs), "seeds": seeds}


def agreement(a: pd.DataFrame, b: pd.DataFrame | None = None, *, class_names: Sequence[str],
              names: tuple[str, str] = ("A", "B"), resamples: int = RESAMPLES, level: float = LEVEL,
              seed: int = 0) -> dict[str, Any]:
    """Where two runs over the same samples err, or (``b`` None) where the seeds of one run do.

    Args:
        a: a run's predictions: one row per (seed, sample) with ``seed, subject, true, predicted`` (``source`` and
            ``clip`` are used when present), as ``predictions.csv`` or a read MEGC2019 log.
        b: the other run's, over the same samples with the same labels; None: the pairs of ``a``'s own seeds.
        class_names: class index -> name (the per-class rows are named by it).
        names: the two runs' names, as the result and its errors give them.
        resamples: subject-bootstrap resamples of ``q_ci`` (at least 100).
        level: its confidence level.
        seed: the resampling generator's seed (the interval is reproducible).

    Returns:
        ``{"names", "seeds", "samples", "seed_pairs", "both_right", "only_a", "only_b", "both_wrong", "same_error",
        "disagreement", "q", "q_ci": [low, high], "level", "ceiling": {"accuracy", "uar"}, "per_class": [{"class",
        "name", "n", <cells>}, ...]}``: shares of samples (see the module's notes); ``q`` is None where the table has
        an empty row or column pair (e.g. a run right on every sample), and ``q_ci`` None with it, for a single
        subject, or where a resample leaves Q undefined.

    Raises:
        ConfigError: a table without the columns or with a sample twice, a seed that misses samples, runs over other
            samples or labels, or one run of a single seed compared with itself.
    """
    check_options(resamples, level, "skip")
    got = _per_sample(a, b, names)
    out = _table(got["cells"], got["true"], len(class_names), got["subjects"], resamples, level, seed)
    out["level"] = level
    for row in out["per_class"]:
        row["name"] = str(class_names[row["class"]])
    return {"names": [names[0]] if b is None else list(names), "seeds": got["seeds"], "samples": len(got["true"]),
            "seed_pairs": got["pairs"], **out}


def q_difference(a: pd.DataFrame, b: pd.DataFrame, reference: pd.DataFrame, *,
                 names: tuple[str, str, str] = ("A", "B", "C"), resamples: int = RESAMPLES, level: float = LEVEL,
                 seed: int = 0) -> dict[str, Any]:
    """Whether ``a`` errs more like ``reference`` than ``b`` does: Yule's Q of (A, C) minus Q of (B, C), with the
    same subjects drawn for both in every resample (a paired subject bootstrap, as
    :func:`~epir.engine.uncertainty.paired_difference` does for scores).

    Returns:
        ``{"names", "q": [Q(A, C), Q(B, C)], "difference", "ci": [low, high], "p_not_higher", "level", "resamples",
        "subjects"}``; ``p_not_higher`` is the share of resamples in which Q(A, C) is not above Q(B, C).

    Raises:
        ConfigError: runs over other samples or labels (as :func:`agreement`), a single subject, or a Q that the
            runs or a resample leave undefined (too few errors).
    """
    check_options(resamples, level, "skip")
    name_a, name_b, name_c = names
    first, second = _per_sample(a, reference, (name_a, name_c)), _per_sample(b, reference, (name_b, name_c))
    sums = _subject_sums([first["cells"], second["cells"]], first["subjects"])  # the same sample order in both
    n_subjects = sums.shape[1]
    if n_subjects < 2:
        raise ConfigError(f"{name_a}, {name_b} and {name_c} cover {n_subjects} subject; a paired bootstrap needs at "
                          "least 2.")
    q = _yules_q(*np.moveaxis(sums.sum(axis=1), -1, 0))
    undefined = ConfigError(f"Q of {name_a} or {name_b} with {name_c} is undefined on these samples or on some "
                            "resamples of their subjects (too few errors); expected runs that err on many subjects.")
    if not np.isfinite(q).all():
        raise undefined

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        qs = _yules_q(*np.moveaxis(sums[:, idx].sum(axis=-2), -1, 0))  # (2, ...)
        return (qs[0] - qs[1])[None]

    result = subject_bootstrap(statistic, n_subjects, resamples, level, seed, "percentile")
    drawn = result.bootstrap_distribution[0]
    if not np.isfinite(drawn).all():
        raise undefined
    return {"names": list(names), "q": [round(float(v), 6) for v in q], "difference": round(float(q[0] - q[1]), 6),
            "ci": interval_of(result, 0, level), "p_not_higher": round(float(np.mean(drawn <= 0)), 6), "level": level,
            "resamples": resamples, "subjects": n_subjects}


def _q(r: dict[str, Any]) -> str:
    """Q and its interval as printed: ``0.657 [0.55, 0.75]``; ``-`` where Q is undefined. A result from before the
    interval (a round-19 ``results.json``) prints Q alone.
    """
    if r.get("q") is None:
        return "-"
    ci = r.get("q_ci")
    return f"{r['q']:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if isinstance(ci, list) and len(ci) == 2 else "")


def describe(r: dict[str, Any]) -> str:
    """One :func:`agreement` result in a line: ``both wrong 0.161 (the same class 0.142), Yule's Q 0.657 [0.55,
    0.75], either right 0.839 / 0.820 (accuracy / UAR; a bound, not a result)``.
    """
    return (f"both wrong {r['both_wrong']:.3f} (the same class {r['same_error']:.3f}), Yule's Q {_q(r)}, either right "
            f"{r['ceiling']['accuracy']:.3f} / {r['ceiling']['uar']:.3f} (accuracy / UAR; a bound, not a result)")


#: What the tables' columns mean, in one sentence.
LEGEND = ("shares of samples, mean over pairs of seeds; same: both wrong with the same class; Q: Yule's Q, 1 = errors "
          "on the same samples, 0 = independent, [its subject-bootstrap interval, 95% unless --level says]; the "
          "ceiling takes whichever is right: a bound, not a result")


def _cells(r: dict[str, Any]) -> list[str]:
    """A row's figures as the tables print them: both right, only A, only B, both wrong, same, Q, ceiling."""
    q = _q(r)
    ceiling = [f"{r['ceiling']['accuracy']:.3f} / {r['ceiling']['uar']:.3f}"] if "ceiling" in r else []
    return [f"{r[key]:.3f}" for key in (*CELLS, "same_error")] + ([q, *ceiling] if ceiling else [])


def format_agreement(rows: Sequence[dict[str, Any]], labels: Sequence[str] | None = None) -> str:
    """One table of :func:`agreement` results (one row each: a pair of runs, a run's own seeds), then the per-class
    cells of the first row, for the CLI.
    """
    labels = list(labels) if labels is not None else [" vs ".join(r["names"]) for r in rows]
    classes = [f"{c['name']} (n={c['n']})" for c in rows[0]["per_class"]]
    width = max(len(label) for label in [*labels, *classes])
    widths = (10, 6, 6, 10, 5, 19, 0)

    def line(label: str, pairs: str, cells: list[str]) -> str:
        return f"  {label:<{width}}  {pairs:>5}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths))

    lines = [f"Where the runs err ({LEGEND}):",
             line("", "pairs", ["both right", "only A", "only B", "both wrong", "same", "Q", "ceiling acc / UAR"])]
    lines += [line(label, str(r["seed_pairs"]), _cells(r)) for label, r in zip(labels, rows)]
    lines.append(f"Per true class, {labels[0]}:")
    lines += [line(label, "", _cells(c)) for label, c in zip(classes, rows[0]["per_class"])]
    return "\n".join(lines)


def agreement_markdown(agreed: dict[str, Any]) -> str:
    """The result of :func:`epir.engine.evaluate.agreements` (every run against a reference, and the reference's own
    seeds) as a markdown table (``epir compare``'s ``comparison.md``).
    """
    reference = agreed["reference"]
    rows = [(f"{name} vs {reference}", r) for name, r in agreed["versus"].items()]
    if agreed["within"] is not None:
        rows.append((f"{reference}'s own seeds", agreed["within"]))
    if not rows:
        return ""
    head = ["A vs B", "seed pairs", "both right", "only A", "only B", "both wrong", "same class", "Q",
            "ceiling acc / UAR"]
    return "\n".join([f"Where the arms err, against {reference} ({LEGEND}):", "", "| " + " | ".join(head) + " |",
                      "|" + "---|" * len(head),
                      *("| " + " | ".join([label, str(r["seed_pairs"]), *_cells(r)]) + " |" for label, r in rows)]
                     ) + "\n"


__all__ = ["CELLS", "LEGEND", "agreement", "agreement_markdown", "describe", "format_agreement", "q_difference"]
