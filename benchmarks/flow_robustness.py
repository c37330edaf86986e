"""Does a recipe depend on something peculiar to the shipped flow maps? Honest LOSO of several arms on the real
composite set as shipped and on copies of it altered the way another flow pipeline would alter it; prints each arm's
scores per map set, its change from the shipped maps, and each arm against the first on the same maps (paired
subject bootstrap).

    python benchmarks/flow_robustness.py                                   # every alteration, seed 0 (~45 min)
    python benchmarks/flow_robustness.py --alterations smooth --seeds 0 1 2
    python benchmarks/flow_robustness.py --models ststnet epir --folds casme2/sub01 samm/006   # a quick look

Issue 13 keeps a second, independently computed flow set of the same clips apart, to check that the recipe does not
rest on the shipped maps' quirks. That set is the maintainers'; this is a stand-in anyone can run. Each alteration is
fixed here, before any run, and applied in memory (nothing is written beside the data):

- ``smooth``: a Gaussian blur of sigma 1 px (5 x 5, reflected border) on every channel: a smoother flow, as from
  another TV-L1 weight or a larger window (``epir.data.transforms.smooth_maps``; as a switch of any run,
  ``data.input_transform=smooth``).
- ``crop``: each map resampled through its own similarity transform, shift uniform in +-2 px on each axis and scale
  uniform in 0.92-1.08 (bilinear, border replicated; a generator seeded once for the whole set): another face
  crop or alignment. A scale of the image would scale the flow vectors too; the per-map min-max below removes any
  such global factor, as it removes it from the shipped maps.
- ``coarse``: 32 levels instead of 256: flow stored at a lower precision.

After each, every channel of every map is min-max normalised to 0-255 and rounded, as the shipped maps are (each
channel of each shipped map spans exactly 0-255 in whole numbers). The arms are ``epir list recipes`` names: the
first is the reference of the paired differences. The default reference, ``ststnet``, is STSTNet with the teacher
recipe of the default (20 epochs at lr 2e-3, about 90 s per LOSO): the official 800-epoch recipe takes about 47
min per LOSO here, too long to repeat per map set.

Runs go to runs/flow-robustness/<map set>/<arm>, the altered sets first, and resume if interrupted (same --out;
more --seeds later add only the new seeds). The data root is
../shared/data/htnet-composite beside the repository, or $EPIR_MEGC2019_ROOT.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from epir.data.base import FlowDataset
from epir.data.flowmaps import load_flowmaps
from epir.data.transforms import SMOOTH_KERNEL, SMOOTH_SIGMA, renormalise_maps, smooth_maps
from epir.engine.compare import parse_arm, run_compare

ALTERATIONS = ("smooth", "crop", "coarse")
#: STSTNet as the default recipe's teacher trains it (``epir.models.epir.STSTNET_TEACHER_OVERRIDES``).
REFERENCE_OVERRIDES = ("ststnet:train.epochs=20", "ststnet:train.lr=2e-3")
SHIFT, SCALE = 2.0, 0.08
LEVELS = 32


def default_root() -> str:
    env = os.environ.get("EPIR_MEGC2019_ROOT")
    return env or str(Path(__file__).resolve().parents[2] / "shared" / "data" / "htnet-composite")


def crop(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Each map through its own similarity transform: shift within +-:data:`SHIFT` px, scale within 1 +-
    :data:`SCALE` (bilinear, border replicated)."""
    n, _, h, w = x.shape
    gen = torch.Generator().manual_seed(seed)
    scale = 1.0 + (torch.rand(n, generator=gen) * 2 - 1) * SCALE
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * SHIFT
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale  # the output samples the input: a zoom by s reads 1/s of it
    theta[:, 0, 2] = shift[:, 0] * 2 / w  # pixels -> the grid's [-1, 1] units
    theta[:, 1, 2] = shift[:, 1] * 2 / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def coarse(x: torch.Tensor) -> torch.Tensor:
    """:data:`LEVELS` levels instead of 256."""
    return (x / 255.0 * (LEVELS - 1)).round() * (255.0 / (LEVELS - 1))


#: What each alteration does, as recorded in ``<out>/<map set>/maps.json``.
ALTERED = {"smooth": f"Gaussian blur, sigma {SMOOTH_SIGMA} px ({SMOOTH_KERNEL} x {SMOOTH_KERNEL}, reflected border; "
                     "epir.data.transforms.smooth_maps, data.input_transform=smooth)",
           "crop": f"per-map similarity transform: shift within +-{SHIFT:g} px, scale within 1 +- {SCALE:g} "
                   "(bilinear, border replicated; generator seed 0)",
           "coarse": f"{LEVELS} levels instead of 256"}


def altered(data: FlowDataset, alteration: str) -> FlowDataset:
    """A copy of ``data`` with its maps altered (then min-max normalised per channel, as shipped)."""
    if alteration == "smooth":  # the library's switch, which normalises its maps itself
        x = smooth_maps(data.x)
    else:
        x = renormalise_maps({"crop": crop, "coarse": coarse}[alteration](data.x))
    return replace(data, x=x, info={**data.info, "alteration": alteration})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--alterations", nargs="+", choices=ALTERATIONS, default=list(ALTERATIONS))
    p.add_argument("--models", nargs="+", default=["ststnet", "epir", "epir@alone"],
                   help="the arms (MODEL or MODEL@RECIPE); the first is the reference")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--folds", nargs="+", default=())
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="[MODEL:]KEY=VALUE for the arms (after the reference STSTNet's 20 epochs at lr 2e-3)")
    p.add_argument("--root", default=default_root())
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default="runs/flow-robustness")
    args = p.parse_args()

    shipped = load_flowmaps(args.root, "megc2019")
    sets = {"shipped": shipped} | {a: altered(shipped, a) for a in args.alterations}
    overrides = [*(REFERENCE_OVERRIDES if any(parse_arm(m)[0] == "ststnet" for m in args.models) else ()),
                 *args.overrides, f"eval.jobs={args.jobs}"]
    tables, diffs, walls = {}, {}, {}
    # the altered maps first: an interrupted run has then measured what only this script can measure
    for name in [*args.alterations, "shipped"]:
        data = sets[name]
        out = Path(args.out) / name
        out.mkdir(parents=True, exist_ok=True)
        # each run's config.yaml names the shipped root, which these maps were made from: say so beside the runs
        (out / "maps.json").write_text(json.dumps(
            {"maps": name, "from": args.root, "alteration": ALTERED.get(name, "none: the maps as shipped"),
             "renormalised": name != "shipped"}, indent=1) + "\n")
        start = time.time()
        tables[name] = run_compare(args.models, out, dataset="megc2019", root=args.root, seeds=args.seeds,
                                   folds=args.folds, overrides=overrides, data=data, progress=False)
        walls[name] = time.time() - start
        diffs[name] = {d["names"][0]: d for d in json.loads((out / "differences.json").read_text())}
        print(f"[{name}] {walls[name]:.0f} s")

    print(f"\nHonest LOSO, seeds {args.seeds}, {tables['shipped']['n_folds'].iloc[0]} folds; the reference "
          f"{args.models[0]}{' (20 epochs at lr 2e-3)' if args.models[0] == 'ststnet' else ''}\n")
    print("| arm | " + " | ".join(f"{s} UF1 | {s} UAR" for s in sets) + " |")
    print("|---|" + "---|---|" * len(sets))
    for i, arm in enumerate(args.models):
        cells = []
        for name in sets:
            row = tables[name].iloc[i]
            base = tables["shipped"].iloc[i]
            for key in ("uf1", "uar"):
                change = "" if name == "shipped" else f" ({row[key] - base[key]:+.4f})"
                cells.append(f"{row[key]:.4f}{change}")
        print(f"| {arm} | " + " | ".join(cells) + " |")
    print(f"\nEach arm minus {args.models[0]} on the same maps (paired subject bootstrap, 95% CI):\n")
    print("| arm - reference | " + " | ".join(f"{s} UF1 | {s} UAR" for s in sets) + " |")
    print("|---|" + "---|---|" * len(sets))
    for arm in args.models[1:]:
        cells = []
        for name in sets:
            d = diffs[name].get(arm)
            for key in ("uf1", "uar"):
                cells.append("-" if d is None else
                             f"{d[key]['difference']:+.4f} [{d[key]['ci'][0]:+.3f}, {d[key]['ci'][1]:+.3f}]")
        print(f"| {arm} | " + " | ".join(cells) + " |")
    print("\nwall s: " + ", ".join(f"{k} {v:.0f}" for k, v in walls.items()))


if __name__ == "__main__":
    main()
