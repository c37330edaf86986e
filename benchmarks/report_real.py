"""The paper-style results table (issue 8) on the real composite set, honest protocol: EPIR, STSTNet, HTNet.

Runs (or resumes: every run directory is kept under --out) the honest LOSO of

- EPIR, default recipe, seeds 0 1 2: CDE (one LOSO over the composite) and SDE on casme2, samm and smic;
- STSTNet, official recipe (800 epochs, Adam 5e-5, batch 256), seed 0: CDE and SDE on each dataset;
- HTNet, official architecture, CPU recipe (40 epochs, batch 64, Adam 5e-5) on its mosaic input, seed 0, CDE
  on a subset of folds only (every 17th subject: 4 folds; HTNet needs about 15 min per fold on 2 cores) —
  marked as such in the table. `--htnet-full --device cuda` runs all folds with its official recipe on a GPU.

then writes `report.md`, `report.csv` and `report.tex` into --out with `epir report`'s code, and prints the
markdown. The full set takes about 3.5 h on 2 cores (STSTNet's 800 epochs are most of it).

    python benchmarks/report_real.py                # everything above
    python benchmarks/report_real.py --models epir  # EPIR's rows only (about 35 min)
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from epir import load_dataset, make_config, run_loso
from epir.engine.report import build_report, to_markdown, write_report
from real_loso import default_root  # noqa: E402  (same folder)

SOURCES = ("casme2", "samm", "smic")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["epir", "ststnet", "htnet"])
    p.add_argument("--root", default=default_root())
    p.add_argument("--out", default="runs/report-real")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--htnet-full", action="store_true", help="HTNet on all folds with its official recipe (GPU)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    data = load_dataset("megc2019", root=a.root)
    out = Path(a.out)
    common = [f"eval.jobs={a.jobs}", f"eval.device={a.device}"]
    plan = []  # (run directory name, config)
    for model in a.models:
        if model == "htnet":
            folds = [] if a.htnet_full else data.subject_list()[::17]
            recipe = "official" if a.htnet_full else "cpu"
            plan.append(("htnet-cde", make_config("htnet", "megc2019", root=a.root, folds=folds, recipe=recipe,
                                                  overrides=[*common, "data.input_transform=mosaic"])))
            continue
        seeds = (0, 1, 2) if model == "epir" else (0,)
        plan.append((f"{model}-cde", make_config(model, "megc2019", root=a.root, seeds=seeds, overrides=common)))
        for src in SOURCES:
            plan.append((f"{model}-sde-{src}", make_config(model, "megc2019", root=a.root, seeds=seeds,
                                                           overrides=[*common, f"data.subset=[{src}]"])))
    t0 = time.perf_counter()
    for name, cfg in plan:
        print(f"[report] {name}", flush=True)
        run_loso(cfg, data, out / name)
    table = build_report([out / name for name, _ in plan])
    paths = write_report(table, out)
    print(to_markdown(table))
    print(f"written: {', '.join(map(str, paths.values()))}   ({time.perf_counter() - t0:.0f} s this invocation)")


if __name__ == "__main__":
    main()
