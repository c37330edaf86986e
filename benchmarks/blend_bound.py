"""How far any re-weighting of a teacher-mix run's two parts could take its score, **tuned on the held-out labels**:
optimistic bounds, never results.

A run of a teacher-mix recipe (the EPIR default) keeps, in its fold files, its model's and its teacher's own held-out
probabilities (``epir.engine.evaluate.read_parts``). This script asks what the best rule of a given family for
combining the two would score if it were chosen with the test labels in hand, the way ``--oracle-epoch`` picks
epochs. A family whose bound stays below a target cannot reach it honestly either, so the bound says which
directions are worth a development budget; a bound above a target says nothing of what an honest choice would get.
No figure here may choose a recipe.

The families, each one setting for every fold and seed, chosen by the mean of UF1 and UAR over seeds:

- ``fixed weight w``: ``(1 - w) model + w teacher`` for w = 0, 0.1, ..., 1 (the default chooses among 0, 0.25, 0.5,
  0.75, 1 in each fold, on the training subjects);
- ``weight per class``: the teacher's weight ``w_c`` for each class's probability (11 values each);
- ``best fixed weight + class offsets``: the best fixed blend's log-probabilities plus an offset per class (the
  first class's 0; -1 to 1 in steps of 0.1), a shift of the decision thresholds;
- ``stacking``: a multinomial logistic regression on both parts' log-probabilities (balanced class weights), fit per
  seed on the very samples it scores (needs scikit-learn, a dev dependency).

    python benchmarks/blend_bound.py runs/r17-default
    python benchmarks/blend_bound.py runs/r18-default-balanced-sqrt runs/r18-default-balanced-1.5
"""
from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from epir.engine.evaluate import read_parts
from epir.engine.uncertainty import scores_of_counts
from epir.errors import ConfigError

#: Weights and offsets tried (11 and 21 values).
WEIGHTS = np.round(np.linspace(0, 1, 11), 2)
OFFSETS = np.round(np.linspace(-1, 1, 21), 2)
#: Classes beyond which the per-class grids are skipped (11**K blends).
MAX_GRID_CLASSES = 4

Seeds = list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per seed: true (n,), model probs (n, K), teacher probs


def parts_by_seed(run: Path) -> tuple[Seeds, list[str]]:
    """Each seed's true labels and both parts' probabilities, samples in the same order; and the class names."""
    parts = read_parts(run)
    if "teacher" not in parts:
        raise ConfigError(f"{run} blends no teacher into its predictions (its parts are {', '.join(parts)}); "
                          "the bounds are of a model and its teacher: give a run of a teacher recipe.")
    names = parts["model"].class_names
    columns = [f"prob_{c}" for c in names]
    out = []
    model, teacher = (parts[p].predictions.sort_values(["seed", "subject", "clip"]) for p in ("model", "teacher"))
    for seed in sorted(model["seed"].unique()):
        mine, theirs = model[model["seed"] == seed], teacher[teacher["seed"] == seed]
        out.append((mine["true"].to_numpy(), mine[columns].to_numpy(), theirs[columns].to_numpy()))
    return out, names


def scores(true: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """UF1 and UAR (absent classes skipped) of predictions shaped (..., n): shape (2, ...)."""
    flat = predicted.reshape(-1, predicted.shape[-1])
    counts = np.stack([np.bincount(true * k + p, minlength=k * k).reshape(k, k) for p in flat])
    uf1, uar = scores_of_counts(counts)
    return np.stack([uf1, uar]).reshape(2, *predicted.shape[:-1])


def best_of(seeds: Seeds, k: int, settings: np.ndarray,
            rule: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The setting (a row of ``settings``) whose mean over seeds of (UF1 + UAR) / 2 is highest, and its mean UF1 and
    UAR; ``rule(model, teacher, settings)`` gives the combined scores, shape (settings, n, K)."""
    per_seed = np.stack([scores(y, rule(m, t, settings).argmax(-1), k) for y, m, t in seeds])  # (seeds, 2, S)
    mean = per_seed.mean(axis=0)
    best = int(np.argmax(mean.sum(axis=0)))
    return settings[best], mean[:, best]


def blend(m: np.ndarray, t: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``(1 - w) m + w t`` for each row of weights ``w`` (shape (S, 1) for one weight, (S, K) per class)."""
    return (1 - w)[:, None, :] * m[None] + w[:, None, :] * t[None]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run directories of a teacher-mix recipe (fold files kept)")
    a = p.parse_args()
    print("OPTIMISTIC BOUNDS: every setting below except the parts alone is chosen with the held-out labels; none is "
          "a result.")
    print("| run | rule | setting | UF1 | UAR |")
    print("|---|---|---|---|---|")
    for run in a.runs:
        seeds, names = parts_by_seed(run)
        k = len(names)

        def row(rule: str, setting: str, score: np.ndarray, run: Path = run) -> None:
            print(f"| {run.name} | {rule} | {setting} | {score[0]:.4f} | {score[1]:.4f} |")

        results = json.loads((run / "results.json").read_text())
        for i, (part, key) in enumerate((("model alone", "model_alone"), ("teacher alone", "teacher"))):
            score = np.mean([scores(y, (m, t)[i].argmax(-1), k) for y, m, t in seeds], axis=0)
            reported = results.get(key) or {}
            if not np.allclose(score, [reported.get("uf1", np.nan), reported.get("uar", np.nan)], atol=1e-6):
                raise SystemExit(f"{run}: the fold files give the {part} {score[0]:.4f} / {score[1]:.4f}, results.json "
                                 f"{key} {reported.get('uf1')} / {reported.get('uar')}: not a faithful read.")
            row(part, "- (as results.json)", score)
        fixed = WEIGHTS[:, None].repeat(k, axis=1)
        w, score = best_of(seeds, k, fixed, blend)
        row("fixed weight (best of 0, 0.1, ..., 1)", f"w = {w[0]:g}", score)
        if k <= MAX_GRID_CLASSES:
            per_class = np.array(list(itertools.product(WEIGHTS, repeat=k)))
            wc, score = best_of(seeds, k, per_class, blend)
            row("weight per class", ", ".join(f"{c} {v:g}" for c, v in zip(names, wc)), score)
            offsets = np.array([(0.0, *o) for o in itertools.product(OFFSETS, repeat=k - 1)])
            best = w[None]  # the best fixed weight, one row of K equal weights

            def shifted(m: np.ndarray, t: np.ndarray, b: np.ndarray, best: np.ndarray = best) -> np.ndarray:
                return np.log(blend(m, t, best) + 1e-12) + b[:, None, :]

            b, score = best_of(seeds, k, offsets, shifted)
            row("best fixed weight + class offsets", ", ".join(f"{c} {v:+g}" for c, v in zip(names, b)), score)
        try:
            from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 (a dev dependency)
        except ImportError:
            print(f"| {run.name} | stacking | scikit-learn is not installed | - | - |")
            continue
        stacked = []
        for y, m, t in seeds:
            x = np.hstack([np.log(m + 1e-9), np.log(t + 1e-9)])
            fit = LogisticRegression(C=10.0, class_weight="balanced", max_iter=5000).fit(x, y)
            stacked.append(scores(y, fit.predict(x)[None], k)[:, 0])
        row("stacking, fit on the scored samples", "logistic regression, C = 10", np.mean(stacked, axis=0))


if __name__ == "__main__":
    main()
