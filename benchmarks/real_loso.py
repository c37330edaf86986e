"""Honest LOSO of a model on the real MEGC2019 composite set; prints UF1/UAR (mean ± std over seeds, overall
and per dataset), wall time, and published reference points measured on the same data.

    python benchmarks/real_loso.py --model ststnet --seeds 0          # official recipe, ~1 h per seed on 2 cores
    python benchmarks/real_loso.py --model epir --seeds 0 1 2
    python benchmarks/real_loso.py --model epir --set train.epochs=40 --folds casme2/sub01 samm/006
    python benchmarks/real_loso.py --model epir --seeds 0 1 2 --subset casme2   # SDE(casme2)

The data root is ../shared/data/htnet-composite beside the repository, or $EPIR_MEGC2019_ROOT.
Runs go to runs/bench-<model>-... and resume if interrupted (same --out).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from epir import make_config, run_loso
from epir.engine.results import format_summary

REFERENCES = {
    "ststnet": "official STSTNet weights (published): UF1 0.7209 / UAR 0.7250; "
               "a public honest re-implementation: UF1 0.7127",
}


def default_root() -> str:
    env = os.environ.get("EPIR_MEGC2019_ROOT")
    if env:
        return env
    return str(Path(__file__).resolve().parents[2] / "shared" / "data" / "htnet-composite")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="epir")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--folds", nargs="+", default=[])
    p.add_argument("--subset", nargs="+", default=[], help="SDE: LOSO inside these source datasets alone")
    p.add_argument("--recipe", default=None, help="a named recipe of the model (e.g. htnet: cpu)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--oracle-epoch", action="store_true")
    p.add_argument("--root", default=default_root())
    p.add_argument("--out", default=None)
    p.add_argument("--jobs", type=int, default=2, help="folds in parallel processes (default 2: one per core)")
    a = p.parse_args()
    cfg = make_config(a.model, "megc2019", root=a.root, seeds=a.seeds, folds=a.folds,
                      oracle_epoch=a.oracle_epoch, recipe=a.recipe,
                      overrides=[f"eval.jobs={a.jobs}", f"data.subset={a.subset}", *a.overrides])
    sde = f"-sde-{'+'.join(a.subset)}" if a.subset else ""
    out = a.out or f"runs/bench-{a.model}{sde}-s{'-'.join(map(str, a.seeds))}"
    t0 = time.perf_counter()
    r = run_loso(cfg, out_dir=out)
    wall = time.perf_counter() - t0
    print()
    print(format_summary(r, title=f"{a.model}: LOSO on MEGC2019 composite ({r['evaluation']})"))
    print(f"params {r['params']:,}   folds {r['n_folds']}   wall {wall:.0f} s this invocation "
          f"({r['resumed_folds']} folds resumed)   mean fold {r['fold_seconds']:.1f} s")
    if a.model in REFERENCES:
        print("reference:", REFERENCES[a.model])
    print(f"run directory: {out}")


if __name__ == "__main__":
    main()
