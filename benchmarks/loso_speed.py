"""LOSO speed on one machine: the one-at-a-time loop (``--fold-batch 1``) against batched fold training, side by
side from one run, with the same ``--jobs``; plus peak memory of the process tree and the accuracy of both.

For each model asked for (default: EPIR's default recipe, full 68-fold LOSO, seed 0):

- wall time of the LOSO with ``eval.fold_batch=1`` and with the automatic fold batch, and their ratio;
- UF1 / UAR of both (on CPU the same within float rounding: batched members replay the dropout and
  stochastic-depth masks the loop draws; before round 9 they drew them from one vmap stream and differed like
  two seeds);
- peak resident memory of the whole process tree (the command and its worker processes).

Then, unless ``--skip-epoch``, seconds per epoch of HTNet's official configuration on one fold (extrapolated
to its official 800-epoch LOSO) against EPIR's LOSO with the automatic fold batch (one at a time on the CPU
since round 10).

    python benchmarks/loso_speed.py                                   # EPIR, full LOSO, seed 0 (~15 min, 2 cores)
    python benchmarks/loso_speed.py --seeds 0 1 2                     # the 3-seed comparison (~45 min)
    python benchmarks/loso_speed.py --models ststnet --folds 8        # STSTNet official recipe, first 8 folds
    python benchmarks/loso_speed.py --fold-batches 1 2 4 8 16 --folds 16 --epochs 10   # choose the auto size
    python benchmarks/loso_speed.py --models epir ststnet --device cuda --jobs 1          # on a GPU
    python benchmarks/loso_speed.py --seeds 0 --skip-epoch --repeats 2   # loop and batched twice, interleaved
    python benchmarks/loso_speed.py --recipe alone --skip-epoch          # EPIR alone (no teacher, no selection)
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
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
    cfg = resolve_config(make_config(model_name, "megc2019", recipe=recipe,
                                     overrides=[*overrides, f"train.epochs={epochs}"]))
    if cfg.data.input_transform != "none":
        data, _ = apply_input_transform(data, cfg.data.input_transform)
    train = data.subset([i for i, s in enumerate(data.subjects) if s != subject])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    t0 = time.perf_counter()
    fit(model, train.x, train.y, cfg.train, seed=0, num_classes=data.num_classes)
    return (time.perf_counter() - t0) / epochs


def timed_loso(model: str, data, root: str, seeds, folds, jobs: int, fold_batch: int, out: Path,
               overrides: list[str], recipe: str | None = None) -> tuple[dict, float, int]:
    if out.exists():
        shutil.rmtree(out)
    cfg = make_config(model, "megc2019", root=root, seeds=seeds, folds=folds, recipe=recipe,
                      overrides=[f"eval.jobs={jobs}", f"eval.fold_batch={fold_batch}", *overrides])
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        r = run_loso(cfg, data, out, progress=False)
        wall = time.perf_counter() - t0
    return r, wall, mem.peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=default_root())
    p.add_argument("--models", nargs="+", default=["epir"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--folds", type=int, default=0, help="only the first N folds (0: all 68)")
    p.add_argument("--epochs", type=int, default=0, help="override the recipe's epochs (0: the recipe's)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes for both paths")
    p.add_argument("--fold-batches", type=int, nargs="+", default=[1, 0],
                   help="fold batches to time (1: the loop; 0: automatic)")
    p.add_argument("--device", default="cpu", help="torch device for both paths (e.g. cuda)")
    p.add_argument("--skip-epoch", action="store_true", help="skip the HTNet seconds-per-epoch measurement")
    p.add_argument("--htnet-epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1,
                   help="time every fold batch this many times, interleaved (1, auto, 1, auto, ...); the summary "
                        "gives each one's median wall and the ratio of the medians")
    p.add_argument("--recipe", default=None,
                   help="the models' recipe (default: each model's default; e.g. alone for EPIR without its teacher)")
    p.add_argument("--out", default="runs/bench-loso-speed")
    a = p.parse_args()
    data = load_dataset("megc2019", root=a.root)
    folds = data.subject_list()[: a.folds] if a.folds else []
    overrides = ([f"train.epochs={a.epochs}"] if a.epochs else []) + [f"eval.device={a.device}"]
    rows: list[tuple[str, ...]] = []
    batched_wall = None
    walls: dict[tuple[str, int], list[float]] = {}
    for model in a.models:
        base = None
        for rep in range(a.repeats):
            for fb in a.fold_batches:
                name = f"{model}-fb{fb}" + (f"-r{rep}" if a.repeats > 1 else "")
                r, wall, peak = timed_loso(model, data, a.root, a.seeds, folds, a.jobs, fb, Path(a.out) / name,
                                           overrides, a.recipe)
                base = wall if base is None else base
                walls.setdefault((model, fb), []).append(wall)
                spread = (f"{r['uf1']:.4f} ± {r.get('uf1_std', 0):.4f} / {r['uar']:.4f} ± {r.get('uar_std', 0):.4f}"
                          if len(a.seeds) > 1 else f"{r['uf1']:.4f} / {r['uar']:.4f}")
                rows.append((model, f"{fb or 'auto'} ({r['fold_batch']})", str(rep), str(r["n_folds"]),
                             str(len(a.seeds)), f"{wall:.0f}", f"{base / wall:.2f}x", f"{peak / 1e9:.2f}", spread))
                if model == "epir" and fb == 0:
                    batched_wall = (wall, r["n_folds"])
                print(rows[-1], flush=True)
    cores = os.cpu_count() or 1
    print(f"\nLOSO speed on {cores} cores, {a.jobs} worker processes (torch {torch.__version__}, {len(data)} "
          "samples)\n")
    print("| model | fold batch (used) | repeat | folds | seeds | wall s | speed-up vs first row | peak GB "
          "| UF1 / UAR |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if a.repeats > 1:
        print("\n| model | fold batch | walls s | median s | speed-up vs the first fold batch's median |")
        print("|---|---|---|---|---|")
        for model in a.models:
            first = statistics.median(walls[(model, a.fold_batches[0])])
            for fb in a.fold_batches:
                med = statistics.median(walls[(model, fb)])
                print(f"| {model} | {fb or 'auto'} | {', '.join(f'{w:.0f}' for w in walls[(model, fb)])} | "
                      f"{med:.0f} | {first / med:.2f}x |")
    if not a.skip_epoch and batched_wall is not None:
        torch.set_num_threads(cores)
        subject = data.subject_list()[0]
        htnet_epoch = seconds_per_epoch("htnet", data, subject, epochs=a.htnet_epochs, recipe="official",
                                        overrides=("data.input_transform=mosaic",))
        wall, n_folds = batched_wall
        htnet_loso = htnet_epoch * HTNET_OFFICIAL_EPOCHS * n_folds
        print(f"\nHTNet official: {htnet_epoch:.2f} s/epoch -> {n_folds} folds x {HTNET_OFFICIAL_EPOCHS} epochs = "
              f"{htnet_loso / 3600:.1f} h here, {htnet_loso / wall:.0f}x EPIR's LOSO (automatic fold batch)")


if __name__ == "__main__":
    main()
