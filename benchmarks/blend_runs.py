"""The blend of two finished runs over the same folds: their class probabilities averaged, seed by seed and sample by
sample, with a weight fixed beforehand; scored and paired with other runs or blends.

Two runs of the same dataset, folds and seeds are two recipes trained on the same training subjects of every fold, so
their blend is an honest ensemble of the two, as long as the weight is not chosen on the held-out subjects (it is
given, never searched here). It costs what both runs cost. Round 29 (docs/epir-design.md) uses it to ask whether EPIR
on recentred maps, which errs on other samples than EPIR on the maps as they are, is worth anything as a partner.

    python benchmarks/blend_runs.py runs/r25-alone runs/r29-recentre --versus runs/r25-alone
    python benchmarks/blend_runs.py runs/r25-alone runs/r29-recentre --versus runs/r25-refine-off+runs/r25-alone

``--versus`` takes run directories, MEGC2019 logs, or blends written ``RUN_A+RUN_B`` (equal weights). Each line is the
paired subject bootstrap of ``epir evaluate A --versus B`` (:func:`epir.engine.uncertainty.paired_difference`).
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from epir.engine.evaluate import ScoredRun, read_scored, same_classes
from epir.engine.uncertainty import paired_difference, same_samples
from epir.errors import ConfigError

KEYS = ["seed", "subject", "clip"]


def blend(a: ScoredRun, b: ScoredRun, weight: float, names: tuple[str, str]) -> ScoredRun:
    """``(1 - weight) a + weight b`` of two runs' class probabilities, per seed and sample; predicted = the argmax.

    Raises:
        ConfigError: other classes, seeds, samples or labels, or a run without probabilities.
    """
    same_classes(a, b, names)
    probs = [f"prob_{c}" for c in a.class_names]
    for run, name in zip((a, b), names):
        missing = [c for c in probs if c not in run.predictions.columns]
        if missing:
            raise ConfigError(f"{name} keeps no class probabilities ({missing[0]} missing); blend two epir run "
                              "directories.")
    seeds = [sorted(int(s) for s in r.predictions["seed"].unique()) for r in (a, b)]
    if seeds[0] != seeds[1]:
        raise ConfigError(f"{names[0]} has seeds {seeds[0]} and {names[1]} {seeds[1]}; blend runs of the same seeds.")
    same_samples(a.predictions, b.predictions, *names)  # every seed of each the same samples and labels as the other's
    left = a.predictions.set_index(KEYS).sort_index()
    right = b.predictions.set_index(KEYS).reindex(left.index)
    mixed = (1 - weight) * left[probs].to_numpy(dtype=float) + weight * right[probs].to_numpy(dtype=float)
    out = left.drop(columns=[c for c in left.columns if c.startswith("prob_") or c == "predicted_name"]).copy()
    out[probs] = mixed
    out["predicted"] = mixed.argmax(axis=1)
    return ScoredRun(out.reset_index(), a.class_names, a.protocol, a.absent, a.evaluation)


def read(spec: str, weight: float = 0.5) -> ScoredRun:
    """A run directory or log, or ``RUN_A+RUN_B``: their blend at ``weight``."""
    if "+" in spec:
        first, second = spec.split("+", 1)
        return blend(read_scored(first), read_scored(second), weight, (first, second))
    return read_scored(spec)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs=2, help="the two run directories to blend")
    p.add_argument("--weight", type=float, default=0.5, help="the second run's weight, fixed beforehand (default 0.5)")
    p.add_argument("--versus", nargs="*", default=[], help="runs, logs or RUN_A+RUN_B blends to pair the blend with")
    p.add_argument("--resamples", type=int, default=2000)
    args = p.parse_args()
    if not 0 <= args.weight <= 1:
        raise SystemExit(f"--weight {args.weight}: expected a number in [0, 1] (the second run's share).")
    name = f"{args.runs[0]} + {args.runs[1]} (weight {args.weight:g})"
    mixed = blend(read_scored(args.runs[0]), read_scored(args.runs[1]), args.weight, (args.runs[0], args.runs[1]))
    k = len(mixed.class_names)
    print("| blend | versus | blend UF1 | its UF1 | UF1 difference [95%] | blend UAR | its UAR "
          "| UAR difference [95%] |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in args.versus or [args.runs[0]]:
        d = paired_difference(mixed.predictions, read(spec).predictions, k, absent=mixed.absent,
                              resamples=args.resamples, names=(name, spec))
        cells = []
        for key in ("uf1", "uar"):
            r = d[key]
            cells += [f"{r['a']:.4f}", f"{r['b']:.4f}",
                      f"{r['difference']:+.4f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]"]
        print(f"| {name} | {spec} | " + " | ".join(cells) + " |")
    agree = (mixed.predictions["predicted"].to_numpy() == mixed.predictions["true"].to_numpy()).mean()
    print(f"\naccuracy of the blend, mean over seeds: {agree:.4f}; {len(np.unique(mixed.predictions['seed']))} seeds, "
          f"{len(pd.unique(mixed.predictions['subject']))} subjects")


if __name__ == "__main__":
    main()
