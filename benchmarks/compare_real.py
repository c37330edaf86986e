"""`epir compare` of EPIR, HTNet and STSTNet on the real MEGC2019 composite set (honest protocol).

On a 2-core CPU HTNet (139.6 M parameters) takes 15-25 s per epoch, so by default this runs a subset of folds
(every 17th subject in fold order: casme2/sub01, casme2/sub20, smic/s13, samm/018; --step N for every Nth)
with HTNet's CPU recipe (40 epochs, batch 64, Adam 5e-5) on its mosaic input (about 15 min per fold);
EPIR and STSTNet use their default recipes on the same folds. `--full` runs all 68 folds with HTNet's
official recipe (800 epochs) — for a GPU machine (`--device cuda`).

    python benchmarks/compare_real.py                       # CPU: 4 folds, htnet:cpu (about 1 h)
    python benchmarks/compare_real.py --step 4              # CPU: 17 folds (about 4 h)
    python benchmarks/compare_real.py --full --device cuda  # GPU: 68 folds, official recipes
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from epir import load_dataset
from epir.engine.compare import run_compare
from real_loso import default_root  # noqa: E402  (same folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--full", action="store_true", help="all 68 folds, HTNet's official recipe")
    p.add_argument("--step", type=int, default=17, help="without --full: every STEP-th subject's fold")
    p.add_argument("--device", default="cpu")
    p.add_argument("--root", default=default_root())
    p.add_argument("--out", default=None)
    a = p.parse_args()
    data = load_dataset("megc2019", root=a.root)
    folds = [] if a.full else data.subject_list()[:: a.step]
    recipes = {} if a.full else {"htnet": "cpu"}
    out = Path(a.out or f"runs/bench-compare-{'full' if a.full else f'step{a.step}'}")
    t0 = time.perf_counter()
    table = run_compare(["epir", "htnet", "ststnet"], out, dataset="megc2019", root=a.root, seeds=a.seeds,
                        folds=folds, recipes=recipes, data=data,
                        overrides=["htnet:data.input_transform=mosaic", f"eval.device={a.device}",
                                   *([] if a.device != "cpu" else ["eval.jobs=2"])])
    print((out / "comparison.md").read_text())
    e, h = table.set_index("name").loc["epir"], table.set_index("name").loc["htnet"]
    print(f"EPIR parameters: {e['params'] / h['params']:.3%} of HTNet's (budget 1.6%)")
    print(f"EPIR - HTNet: UF1 {e['uf1'] - h['uf1']:+.4f}, UAR {e['uar'] - h['uar']:+.4f}")
    print(f"wall {time.perf_counter() - t0:.0f} s; run directory {out}")


if __name__ == "__main__":
    main()
