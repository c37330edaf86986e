"""How close retrained runs come to a reference run: their scores, and whether they err on the reference's samples.

A retraining can score like a reference (the official STSTNet weights) and still err elsewhere; Yule's Q between the
two (``epir.engine.agreement``) says how much their errors coincide. This script reads finished runs over the same
samples and prints, for each:

- UF1 and UAR (the mean over its seeds) and the per-source UF1;
- its paired difference from the reference (``epir evaluate RUN --versus REFERENCE``);
- where it errs against the reference: both wrong, Yule's Q with its subject-bootstrap interval;
- where its own seeds err against each other (a run of two or more seeds): how alike one more seed would be.

Then, for every run after the first, Q(run, reference) - Q(first run, reference) on the same resampled subjects
(``epir.engine.agreement.q_difference``): does that run err more like the reference than the first does?

    python benchmarks/errs_like.py runs/ststnet-official runs/bench-ststnet-s0 runs/r20-ststnet-by-class

Nothing here trains; a few seconds.
"""
from __future__ import annotations

import argparse

from epir.engine.agreement import agreement, q_difference
from epir.engine.evaluate import ScoredRun, read_scored
from epir.engine.results import summarize
from epir.engine.uncertainty import format_interval, paired_difference


def per_source(run: ScoredRun) -> str:
    """``casme2 0.817 / samm 0.604 / smic 0.637``: UF1 per source, the mean over seeds (as ``results.json``'s
    ``per_dataset``; its intervals at the fewest resamples, since they are not printed)."""
    rows = summarize(run.predictions, run.class_names, run.protocol, run.absent, ci_resamples=100)["per_dataset"]
    return " / ".join(f"{name} {rows[name]['uf1']:.3f}" for name in sorted(rows))


def seeds(run: ScoredRun) -> list[int]:
    """The run's seeds, sorted."""
    return sorted(int(s) for s in run.predictions["seed"].unique())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", help="the run (directory or MEGC2019 log) the others are read against")
    parser.add_argument("runs", nargs="+", help="finished runs over the same samples; the first is the baseline of "
                        "the Q differences")
    parser.add_argument("--resamples", type=int, default=2000, help="subject-bootstrap resamples (default 2000)")
    args = parser.parse_args()
    ref = read_scored(args.reference)
    runs = {name: read_scored(name) for name in args.runs}
    print(f"reference: {args.reference} ({ref.protocol}; seeds {seeds(ref)}), "
          f"UF1 per source {per_source(ref)}")
    for name, run in runs.items():
        diff = paired_difference(run.predictions, ref.predictions, len(ref.class_names), absent=ref.absent,
                                 resamples=args.resamples, names=(name, args.reference))  # the runs read once
        vs = agreement(run.predictions, ref.predictions, class_names=ref.class_names, names=(name, "reference"),
                       resamples=args.resamples)
        print(f"\n{name} ({run.protocol}; seeds {seeds(run)})")
        print(f"  UF1 {diff['uf1']['a']:.4f}  UAR {diff['uar']['a']:.4f}   per source: {per_source(run)}")
        print(f"  minus the reference: UF1 {diff['uf1']['difference']:+.4f} {format_interval(diff['uf1']['ci'])}, "
              f"UAR {diff['uar']['difference']:+.4f} {format_interval(diff['uar']['ci'])} (paired)")
        print(f"  against the reference: both wrong {vs['both_wrong']:.3f} (the same class {vs['same_error']:.3f}), "
              f"only it right {vs['only_a']:.3f}, only the reference {vs['only_b']:.3f}, "
              f"Q {vs['q']:.3f} {format_interval(vs['q_ci'])}")
        if run.predictions["seed"].nunique() > 1:
            own = agreement(run.predictions, class_names=ref.class_names, names=(name, name),
                            resamples=args.resamples)
            print(f"  its own seeds: Q {own['q']:.3f} {format_interval(own['q_ci'])}, "
                  f"disagreement {own['disagreement']:.3f}")
    first, *rest = runs
    for name in rest:
        d = q_difference(runs[name].predictions, runs[first].predictions, ref.predictions,
                         names=(name, first, "reference"), resamples=args.resamples)
        print(f"\nQ({name}, reference) - Q({first}, reference) = {d['q'][0]:.3f} - {d['q'][1]:.3f} = "
              f"{d['difference']:+.3f} {format_interval(d['ci'])} (paired subject bootstrap, "
              f"{d['subjects']} subjects); share of resamples not higher {d['p_not_higher']:.3f}")


if __name__ == "__main__":
    main()
