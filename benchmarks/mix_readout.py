"""Post-hoc reading of a teacher-mix run's fold files: what each fixed weight, or each in-fold margin, would have
scored with the same trained networks. A reading of stored predictions, not a result: nothing here is chosen on
the held-out subjects' scores, and no figure it prints may choose a recipe (docs/epir-design.md, "Round 8").

A fold file of a run with ``train.distill_mix`` keeps the blend it predicted (``probs``), the teacher's own
probabilities (``teacher_probs``) and, when the weight was chosen inside the fold, its ``selection`` record. The
student's probabilities follow, ``(probs - w teacher) / (1 - w)`` (not for a fold that chose the teacher alone,
w = 1), and with them any other blend. The row ``as run`` must reproduce the run's own scores; the script stops if
it does not.

    python benchmarks/mix_readout.py runs/r8-coarse-s0 runs/r8-coarse-s1 runs/r8-coarse-s2
    python benchmarks/mix_readout.py runs/r8-default6-s0 --weights 0 0.25 0.5 0.75 1 --margins 0.01 0.02
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from epir.config import RunConfig
from epir.engine.metrics import megc_scores
from epir.engine.selection import candidate_configs, choose_with_margin, prior_candidate
from epir.runsetup import resolve_config


def fold_parts(rec: dict, weights: list[float], mix: float) -> tuple[np.ndarray, np.ndarray, float, dict | None]:
    """``(student probs, teacher probs, weight used, selection record or None)`` of one fold file's record;
    ``weights`` is each ``train.select`` candidate's ``train.distill_mix``, ``mix`` the run's own (the weight of a
    fold that chose nothing)."""
    if "teacher_probs" not in rec:
        raise SystemExit(f"fold {rec['seed']}/{rec['subject']}: no teacher_probs; this reads runs with train.distill.")
    blend, teacher = np.asarray(rec["probs"]), np.asarray(rec["teacher_probs"])
    sel = rec.get("selection") or None
    w = weights[sel["chosen"]] if sel else mix
    if w >= 1:
        raise SystemExit(f"fold {rec['seed']}/{rec['subject']} used the teacher alone: its student cannot be read "
                         "back.")
    return (blend - w * teacher) / (1 - w), teacher, w, sel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run directories of a teacher-mix recipe")
    p.add_argument("--weights", nargs="+", type=float, default=[0.0, 0.5, 1.0])
    p.add_argument("--margins", nargs="+", type=float, default=[0.01, 0.02],
                   help="train.select_margin values to read (the prior: the run's own train.distill_mix)")
    a = p.parse_args()
    print("| run | seed | blend | UF1 | UAR | weights used (folds) |")
    print("|---|---|---|---|---|---|")
    every: dict[str, list[tuple[float, float]]] = {}  # over all the runs' seeds (one seed per run directory, say)
    for run in a.runs:
        results = json.loads((run / "results.json").read_text())
        per_seed = {int(s["seed"]): s for s in results.get("per_seed") or [results]}
        cfg = resolve_config(RunConfig.load(run / "config.yaml"))
        weights = [c.train.distill_mix for c in candidate_configs(cfg)]
        prior = prior_candidate(cfg) if cfg.train.select else None
        by_label: dict[str, list[tuple[float, float]]] = {}
        for seed_dir in sorted((run / "folds").glob("seed*")):
            seed = int(seed_dir.name[4:])
            recs = [json.loads(f.read_text()) for f in sorted(seed_dir.glob("*.json"))]
            parts = [fold_parts(r, weights, cfg.train.distill_mix) for r in recs]
            true = [y for r in recs for y in r["true"]]
            rows: list[tuple[str, list[float]]] = [("as run", [w for _, _, w, _ in parts])]
            rows += [(f"fixed {w:g}", [w] * len(parts)) for w in a.weights]
            if prior is not None and all(sel for *_, sel in parts):
                for m in a.margins:
                    ws = [weights[choose_with_margin(sel["scores"], prior, m)] for *_, sel in parts]
                    rows.append((f"margin {m:g} (prior {weights[prior]:g})", ws))
            for label, ws in rows:
                pred = [int(k) for (s, t, _, _), w in zip(parts, ws) for k in ((1 - w) * s + w * t).argmax(1)]
                sc = megc_scores(true, pred, len(results["class_names"]), absent="skip")
                if label == "as run":
                    ref = per_seed[seed]
                    if abs(sc["uf1"] - ref["uf1"]) > 1e-9 or abs(sc["uar"] - ref["uar"]) > 1e-9:
                        raise SystemExit(f"{run} seed {seed}: the reading gives {sc['uf1']:.4f} / {sc['uar']:.4f}, "
                                         f"the run reported {ref['uf1']:.4f} / {ref['uar']:.4f}: not a faithful read.")
                counts = {w: ws.count(w) for w in sorted(set(ws))}
                used = ", ".join(f"{w:g}: {n}" for w, n in counts.items())
                print(f"| {run.name} | {seed} | {label} | {sc['uf1']:.4f} | {sc['uar']:.4f} | {used} |")
                by_label.setdefault(label, []).append((sc["uf1"], sc["uar"]))
        for label, scores in by_label.items():  # the mean over the run's seeds (the figure a recipe is judged by)
            every.setdefault(label, []).extend(scores)
            if len(scores) > 1:
                print_mean(run.name, label, scores)
    if len(a.runs) > 1:
        for label, scores in every.items():
            print_mean("all runs", label, scores)


def print_mean(name: str, label: str, scores: list[tuple[float, float]]) -> None:
    """A table row: the mean ± sample standard deviation of (UF1, UAR) readings."""
    uf1, uar = np.asarray(scores).T
    print(f"| {name} | mean of {len(scores)} | {label} | {uf1.mean():.4f} ± {uf1.std(ddof=1):.4f} | "
          f"{uar.mean():.4f} ± {uar.std(ddof=1):.4f} | |")


if __name__ == "__main__":
    main()
