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

Per class, the same cells are given within each true class, since UF1 and UAR weigh the rare classes as much as the
common one. Nothing here is a score of either run; use :func:`epir.engine.uncertainty.paired_difference` for that.
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import permutations, product
from typing import Any

import numpy as np
import pandas as pd

from epir.engine.uncertainty import check_predictions, same_samples, samples, subject_of
from epir.errors import ConfigError

#: The cells of the 2 x 2 table, in the order the tables print them.
CELLS = ("both_right", "only_a", "only_b", "both_wrong")


def _predicted_by_seed(predictions: pd.DataFrame, name: str) -> pd.DataFrame:
    """The predicted class of each sample (rows, in :func:`~epir.engine.uncertainty.samples`' order) under each seed
    (columns).
    """
    check_predictions(predictions, name)
    subject = subject_of(predictions)
    clip = (predictions["clip"].astype(str) if "clip" in predictions.columns
            else predictions.groupby([predictions["seed"], subject]).cumcount().astype(str))
    keys = pd.DataFrame({"seed": predictions["seed"].to_numpy(), "subject": subject.to_numpy(),
                         "clip": clip.to_numpy(), "predicted": predictions["predicted"].to_numpy()})
    twice = keys.duplicated(["seed", "subject", "clip"])
    if twice.any():
        row = keys[twice].iloc[0]
        raise ConfigError(f"{name} predicts sample {row['subject']}/{row['clip']} twice under seed {row['seed']}; "
                          "expected one row per seed and sample (a run's predictions.csv).")
    wide = keys.pivot(index=["subject", "clip"], columns="seed", values="predicted")
    if wide.isna().any().any():
        seed = wide.columns[wide.isna().any()][0]
        raise ConfigError(f"{name}: seed {seed} does not predict every sample the other seeds do; expected every seed "
                          "over the same samples (a finished run).")
    return wide.sort_index().astype(int)


def _table(pa: np.ndarray, pb: np.ndarray, true: np.ndarray, pairs: Sequence[tuple[int, int]],
           num_classes: int) -> dict[str, Any]:
    """The 2 x 2 shares and the figures derived from them, averaged over ``pairs`` of columns of ``pa`` and ``pb``.

    ``pa``, ``pb``: predicted classes, shape (samples, seeds); ``true``: shape (samples,).
    """
    n = len(true)
    cells = np.zeros((len(pairs), 5, n))  # per pair: both right, only A, only B, both wrong, same wrong class
    for i, (sa, sb) in enumerate(pairs):
        ra, rb = pa[:, sa] == true, pb[:, sb] == true
        cells[i] = [ra & rb, ra & ~rb, ~ra & rb, ~ra & ~rb, ~ra & ~rb & (pa[:, sa] == pb[:, sb])]
    per_sample = cells.mean(axis=0)  # (5, samples): the expected cell of each sample over the pairs
    share = per_sample.mean(axis=1)
    n11, n10, n01, n00 = share[:4]
    denom = n11 * n00 + n10 * n01
    out: dict[str, Any] = {key: round(float(v), 6) for key, v in zip(CELLS, share[:4])}
    out["same_error"] = round(float(share[4]), 6)
    out["disagreement"] = round(float(n10 + n01), 6)
    out["q"] = round(float((n11 * n00 - n10 * n01) / denom), 6) if denom > 0 else None
    either = 1 - per_sample[3]
    present = [k for k in range(num_classes) if (true == k).any()]
    out["ceiling"] = {"accuracy": round(float(either.mean()), 6),
                      "uar": round(float(np.mean([either[true == k].mean() for k in present])), 6)}
    out["per_class"] = [{"class": k, "n": int((true == k).sum()),
                         **{key: round(float(v), 6) for key, v in
                            zip((*CELLS, "same_error"), per_sample[:, true == k].mean(axis=1))}}
                        for k in present]
    return out


def agreement(a: pd.DataFrame, b: pd.DataFrame | None = None, *, class_names: Sequence[str],
              names: tuple[str, str] = ("A", "B")) -> dict[str, Any]:
    """Where two runs over the same samples err, or (``b`` None) where the seeds of one run do.

    Args:
        a: a run's predictions: one row per (seed, sample) with ``seed, subject, true, predicted`` (``source`` and
            ``clip`` are used when present), as ``predictions.csv`` or a read MEGC2019 log.
        b: the other run's, over the same samples with the same labels; None: the pairs of ``a``'s own seeds.
        class_names: class index -> name (the per-class rows are named by it).
        names: the two runs' names, as the result and its errors give them.

    Returns:
        ``{"names", "seeds", "samples", "seed_pairs", "both_right", "only_a", "only_b", "both_wrong", "same_error",
        "disagreement", "q", "ceiling": {"accuracy", "uar"}, "per_class": [{"class", "name", "n", <cells>}, ...]}``:
        shares of samples (see the module's notes); ``q`` is None where the table has an empty row or column pair
        (e.g. a run right on every sample).

    Raises:
        ConfigError: a table without the columns or with a sample twice, a seed that misses samples, runs over other
            samples or labels, or one run of a single seed compared with itself.
    """
    name_a, name_b = names
    wide_a = _predicted_by_seed(a, name_a)
    true_a = samples(a)
    if b is None:
        if wide_a.shape[1] < 2:
            raise ConfigError(f"{name_a} has one seed ({wide_a.columns[0]}); agreement between a run's seeds needs at "
                              "least 2 (run it with --seeds 0 1 2), or compare it with another run.")
        wide_b, pairs = wide_a, list(permutations(range(wide_a.shape[1]), 2))
    else:
        same_samples(a, b, name_a, name_b)
        wide_b = _predicted_by_seed(b, name_b).loc[wide_a.index]
        pairs = list(product(range(wide_a.shape[1]), range(wide_b.shape[1])))
    true = true_a.loc[wide_a.index].to_numpy().astype(int)
    out = _table(wide_a.to_numpy(), wide_b.to_numpy(), true, pairs, len(class_names))
    for row in out["per_class"]:
        row["name"] = str(class_names[row["class"]])
    seeds = [sorted(int(s) for s in wide_a.columns)] + ([] if b is None else [sorted(int(s) for s in wide_b.columns)])
    return {"names": [name_a] if b is None else [name_a, name_b], "seeds": seeds, "samples": len(true),
            "seed_pairs": len(pairs), **out}


def describe(r: dict[str, Any]) -> str:
    """One :func:`agreement` result in a line: ``both wrong 0.161 (the same class 0.142), Yule's Q 0.657, either
    right 0.839 / 0.820 (accuracy / UAR; a bound, not a result)``.
    """
    q = "-" if r.get("q") is None else f"{r['q']:.3f}"
    return (f"both wrong {r['both_wrong']:.3f} (the same class {r['same_error']:.3f}), Yule's Q {q}, either right "
            f"{r['ceiling']['accuracy']:.3f} / {r['ceiling']['uar']:.3f} (accuracy / UAR; a bound, not a result)")


#: What the tables' columns mean, in one sentence.
LEGEND = ("shares of samples, mean over pairs of seeds; same: both wrong with the same class; Q: Yule's Q, 1 = errors "
          "on the same samples, 0 = independent; the ceiling takes whichever is right: a bound, not a result")


def _cells(r: dict[str, Any]) -> list[str]:
    """A row's figures as the tables print them: both right, only A, only B, both wrong, same, Q, ceiling."""
    q = f"{r['q']:.3f}" if r.get("q") is not None else "-"
    ceiling = [f"{r['ceiling']['accuracy']:.3f} / {r['ceiling']['uar']:.3f}"] if "ceiling" in r else []
    return [f"{r[key]:.3f}" for key in (*CELLS, "same_error")] + ([q, *ceiling] if ceiling else [])


def format_agreement(rows: Sequence[dict[str, Any]], labels: Sequence[str] | None = None) -> str:
    """One table of :func:`agreement` results (one row each: a pair of runs, a run's own seeds), then the per-class
    cells of the first row, for the CLI.
    """
    labels = list(labels) if labels is not None else [" vs ".join(r["names"]) for r in rows]
    classes = [f"{c['name']} (n={c['n']})" for c in rows[0]["per_class"]]
    width = max(len(label) for label in [*labels, *classes])
    widths = (10, 6, 6, 10, 5, 6, 0)

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


__all__ = ["CELLS", "LEGEND", "agreement", "agreement_markdown", "describe", "format_agreement"]
