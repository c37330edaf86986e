"""Learning curves by training subjects: honest LOSO of several arms on the real MEGC2019 composite set, each fold
trained on a share of its training subjects (``train.subject_fraction``: drawn per seed and held-out subject, nested,
the held-out subject never among them), every share on the same folds and seeds.

    python benchmarks/learning_curve.py                                  # EPIR alone and STSTNet, seed 0
    python benchmarks/learning_curve.py --seeds 0 1 2 --out runs/r22-curve
    python benchmarks/learning_curve.py --models epir@alone --shares 0.5 1 --folds casme2/sub01 samm/006

The default arms are EPIR alone (``epir@alone``) and STSTNet in the recipe of EPIR's teachers (20 epochs, lr 2e-3;
it scores as the official 800 epochs do, at a fortieth of the cost). Each share is one ``epir compare`` directory,
``OUT/share-<s>``, resumable. The table gives, per share and arm, UF1 / UAR (mean over seeds), their ratio to the
whole share (1, measured in the same run), the drop from the whole share paired on the same subjects (is the curve
still rising at the end?), each other arm minus the first at each share, paired, and how much more the first arm
gains from the share to 1 than each other arm does, (first at 1 - first at the share) - (other at 1 - other at the
share), a paired difference of differences (``epir.engine.uncertainty.paired_contrast``): does one model lose more as
the subjects shrink? The share is a learning-curve point, not the protocol: only share 1 is an honest LOSO result.
Each arm's time is its ``results.json``'s, over every invocation that trained it.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from epir import load_dataset
from epir.engine.compare import run_compare
from epir.engine.evaluate import ScoredRun, read_run_dir
from epir.engine.uncertainty import paired_contrast, paired_difference
from real_loso import default_root  # noqa: E402  (same folder)

#: STSTNet as EPIR's teachers train it (``EPIR_RECIPE``'s ``train.distill_overrides``).
TEACHER_RECIPE = ("ststnet:train.epochs=20", "ststnet:train.lr=0.002")


def share_dir(out: Path, share: float) -> Path:
    return out / f"share-{share:g}"


def results_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def paired(a: ScoredRun, b: ScoredRun) -> dict:
    """A - B on the same subjects (UF1 and UAR, paired subject bootstrap)."""
    return paired_difference(a.predictions, b.predictions, len(a.class_names), absent=a.absent)


def wall_of(results: dict) -> str:
    """The run's wall time over every invocation (``wall_seconds_total``; ``wall_seconds`` in an older file)."""
    seconds = results.get("wall_seconds_total", results.get("wall_seconds"))
    return "?" if seconds is None else f"{seconds:.0f} s"


def interval(value: float, ci: list[float]) -> str:
    """``+0.012 [-0.034, +0.058]``: a paired figure and its interval, as every cell of the table shows one."""
    return f"{value:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"


def cell(diff: dict) -> str:
    return interval(diff["difference"], diff["ci"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["epir@alone", "ststnet"], help="the arms (as epir compare's)")
    p.add_argument("--shares", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0],
                   help="shares of each fold's training subjects; 1 (the whole LOSO) is the reference")
    p.add_argument("--set", action="append", default=None, metavar="[MODEL:]KEY=VALUE",
                   help="as epir compare's --set (default: STSTNet in the teachers' recipe)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--folds", nargs="*", default=[])
    p.add_argument("--jobs", type=int, default=2, help="folds in parallel processes (default 2: one per core)")
    p.add_argument("--root", default=default_root())
    p.add_argument("--out", default="runs/bench-learning-curve")
    a = p.parse_args()
    shares = sorted(set(a.shares))
    if 1.0 not in shares:
        shares.append(1.0)  # the reference every ratio is read against
    sets = list(TEACHER_RECIPE) if a.set is None else a.set
    out = Path(a.out)
    data = load_dataset("megc2019", root=a.root)
    t0 = time.perf_counter()
    subjects: dict[float, float] = {}
    for share in shares:
        print(f"[curve] share {share:g}")
        run_compare(a.models, share_dir(out, share), dataset="megc2019", root=a.root, seeds=a.seeds, folds=a.folds,
                    overrides=[*sets, f"eval.jobs={a.jobs}", f"train.subject_fraction={share:g}"], data=data)
        drawn = results_of(share_dir(out, share) / a.models[0]).get("subject_fraction")
        subjects[share] = drawn["train_subjects_mean"] if drawn else float(len(set(data.subjects)) - 1)
    wall = time.perf_counter() - t0

    runs = {(share, m): read_run_dir(share_dir(out, share) / m) for share in shares for m in a.models}
    stored = {(share, m): results_of(share_dir(out, share) / m) for share in shares for m in a.models}
    whole = {m: runs[(1.0, m)] for m in a.models}
    first, others = a.models[0], a.models[1:]
    print(f"\nLearning curves on {data.name} (honest LOSO, seeds {a.seeds}, "
          f"{len(a.folds) or len(set(data.subjects))} folds; {'; '.join(sets) or 'default recipes'}); this invocation "
          f"{wall:.0f} s")
    print("time over every invocation: " + "; ".join(
        f"{m} " + ", ".join(f"{wall_of(stored[(share, m)])} at {share:g}" for share in shares) for m in a.models))
    head = "| share | training subjects |"
    rule = "|---|---|"
    for m in a.models:
        head += f" {m} UF1 / UAR | ratio to share 1 | UF1 − share 1 [95% CI] |"
        rule += "---|---|---|"
    for other in others:
        head += (f" {other} − {first} UF1 [95% CI] | UAR [95% CI] |"
                 f" {first}'s gain to share 1 − {other}'s, UF1 [95% CI] | UAR [95% CI] |")
        rule += "---|---|---|---|"
    print(head)
    print(rule)
    for share in shares:
        row = f"| {share:g} | {subjects[share]:.1f} |"
        for m in a.models:
            s, w = stored[(share, m)], stored[(1.0, m)]
            row += f" {s['uf1']:.4f} / {s['uar']:.4f} | {s['uf1'] / w['uf1']:.3f} / {s['uar'] / w['uar']:.3f} |"
            row += " (reference) |" if share == 1.0 else f" {cell(paired(runs[(share, m)], whole[m])['uf1'])} |"
        for other in others:
            d = paired(runs[(share, other)], runs[(share, first)])
            row += f" {cell(d['uf1'])} | {cell(d['uar'])} |"
            if share == 1.0:
                row += " (reference) | |"
            else:  # (first at 1 - first at the share) - (other at 1 - other at the share), paired
                tables = [runs[(1.0, first)], runs[(share, first)], runs[(1.0, other)], runs[(share, other)]]
                g = paired_contrast([t.predictions for t in tables], [1, -1, -1, 1], len(tables[0].class_names),
                                    absent=tables[0].absent)
                row += "".join(f" {interval(g[k]['value'], g[k]['ci'])} |" for k in ("uf1", "uar"))
        print(row)
    print("\nA share below 1 is a learning-curve point (each fold trained on a drawn share of its subjects), not an "
          "honest LOSO result of the recipe; differences are paired subject bootstraps (2000 resamples).")


if __name__ == "__main__":
    main()
