"""LOSO speed on one machine (issue 7): EPIR's full honest LOSO against HTNet's official recipe, same data.

Prints, from one run on this machine:

- seconds per training epoch of EPIR (default recipe) and of HTNet (official configuration and recipe: batch
  256, Adam, mosaic input) on one fold's training set of the real composite (both with all cores);
- how folds are best run on this machine: one process with every core, or one process per core (first folds);
- the wall time of EPIR's full 68-fold honest LOSO (default recipe, one seed, one process per core) with its
  UF1/UAR (unchanged from the EPIR issue for the same seed), and the peak memory of the whole process tree;
- the official HTNet LOSO time extrapolated from its seconds per epoch (68 folds x 800 epochs) and the ratio.

    python benchmarks/loso_speed.py                 # ~10 min on 2 cores
    python benchmarks/loso_speed.py --skip-loso     # epoch times only
"""
from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import psutil
import torch

from epir import load_dataset, make_config, run_loso
from epir.data.transforms import apply_input_transform
from epir.engine.loso import resolve_config
from epir.engine.train import fit
from epir.models import build_model

from real_loso import default_root  # noqa: E402  (same folder)

HTNET_OFFICIAL_EPOCHS = 800


class PeakMemory:
    """Peak resident memory (bytes) of this process and all its children, sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def seconds_per_epoch(model_name: str, data, subject: str, epochs: int, recipe: str | None = None,
                      overrides: tuple[str, ...] = ()) -> float:
    cfg = resolve_config(make_config(model_name, "megc2019", recipe=recipe, overrides=[*overrides, f"train.epochs={epochs}"]))
    if cfg.data.input_transform != "none":
        data, _ = apply_input_transform(data, cfg.data.input_transform)
    train = data.subset([i for i, s in enumerate(data.subjects) if s != subject])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    t0 = time.perf_counter()
    fit(model, train.x, train.y, cfg.train, seed=0, num_classes=data.num_classes)
    return (time.perf_counter() - t0) / epochs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=default_root())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--htnet-epochs", type=int, default=2, help="epochs timed for HTNet (extrapolated to 800)")
    p.add_argument("--skip-loso", action="store_true")
    p.add_argument("--out", default="runs/bench-loso-speed", help="LOSO run directory (deleted first)")
    a = p.parse_args()
    cores = os.cpu_count() or 1
    data = load_dataset("megc2019", root=a.root)
    rows: list[tuple[str, str]] = []
    loso = None
    if not a.skip_loso:
        # First, before any other model has grown this process: the full LOSO and its peak memory.
        out = Path(a.out)
        if out.exists():
            import shutil

            shutil.rmtree(out)
        cfg = make_config("epir", "megc2019", root=a.root, seeds=(a.seed,), overrides=[f"eval.jobs={cores}"])
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            r = run_loso(cfg, data, out, progress=False)
            wall = time.perf_counter() - t0
        loso = (r, wall, mem.peak)
        # How to run folds here: one process with every core, or one process (one thread) per core?
        few = data.subject_list()[:2 * cores]
        for label, over in (("1 process x all threads", ["eval.jobs=1", f"eval.threads={cores}"]),
                            (f"{cores} processes x 1 thread", [f"eval.jobs={cores}", "eval.threads=1"])):
            cfg = make_config("epir", "megc2019", root=a.root, folds=few, overrides=[*over, "train.epochs=10"])
            t0 = time.perf_counter()
            run_loso(cfg, data, progress=False)
            rows.append((f"{len(few)} folds x 10 epochs, {label} (s)", f"{time.perf_counter() - t0:.1f}"))
    torch.set_num_threads(cores)
    subject = data.subject_list()[0]
    epir_epoch = seconds_per_epoch("epir", data, subject, epochs=5)
    htnet_epoch = seconds_per_epoch("htnet", data, subject, epochs=a.htnet_epochs, recipe="official",
                                    overrides=("data.input_transform=mosaic",))
    rows = [("EPIR s/epoch (default recipe, batch 64)", f"{epir_epoch:.3f}"),
            ("HTNet s/epoch (official config, batch 256, mosaic)", f"{htnet_epoch:.2f}"),
            ("HTNet / EPIR per epoch", f"{htnet_epoch / epir_epoch:.0f}x"), *rows]
    if loso is not None:
        r, wall, peak = loso
        htnet_loso = htnet_epoch * HTNET_OFFICIAL_EPOCHS * r["n_folds"]
        rows += [
            (f"EPIR full LOSO wall ({r['n_folds']} folds, seed {a.seed}, {cores} processes) (s)", f"{wall:.0f}"),
            ("EPIR full LOSO UF1 / UAR", f"{r['uf1']:.4f} / {r['uar']:.4f}"),
            ("EPIR LOSO peak memory, process tree (GB)", f"{peak / 1e9:.2f}"),
            (f"HTNet official LOSO, extrapolated ({r['n_folds']} x {HTNET_OFFICIAL_EPOCHS} epochs) (h)",
             f"{htnet_loso / 3600:.1f}"),
            ("HTNet official LOSO / EPIR LOSO", f"{htnet_loso / wall:.0f}x"),
        ]
    width = max(len(k) for k, _ in rows)
    print(f"\nLOSO speed on {cores} cores (torch {torch.__version__}, {data.name}, {len(data)} samples)\n")
    print(f"| {'measure':<{width}} | value |\n|{'-' * (width + 2)}|-------|")
    for k, v in rows:
        print(f"| {k:<{width}} | {v} |")


if __name__ == "__main__":
    main()
