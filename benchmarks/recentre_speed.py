"""What recentring each map on its median costs: a full sort (before round 32) against ``torch.median``.

    python benchmarks/recentre_speed.py                  # one thread, ~2 min
    python benchmarks/recentre_speed.py --threads 2 --rounds 5

``train.input_norm=recentre`` (and ``model.flow_magnitude``) moves each map's u and v by its own median pixel in
every training batch, inner and outer, and at every prediction. Until round 32 the median was read from a full sort
of the map's 784 pixels; :func:`epir.data.augment.map_median` now selects it with ``torch.median`` (the same element,
so every prediction is unchanged) and sorts only while a model is exported to ONNX, which has no median operator.

Table 1: the median time of one call on a batch of the default recipe's size (64 maps, 3 x 28 x 28, 0-255): the
sort (the reference, as it was) against ``map_median``, and all of ``recentre_maps`` with each; ratio = sort /
median (above 1: the median is faster). Table 2: one ``fit`` of the default EPIR recipe (its epochs, on
``--samples`` random maps; no inner selection or teacher) with ``train.input_norm=standardize`` and with
``recentre``, the recentring by the sort and by ``map_median``, interleaved over ``--rounds`` and the median kept;
``vs standardize`` is each fit's time over the standardised one of the same run.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

import epir.data.augment as augment
from epir.config import ModelConfig
from epir.engine.train import fit
from epir.models import build_model, default_recipe, resolve_model_args
from epir.profiling import median_ms


def sort_median(x: torch.Tensor) -> torch.Tensor:
    """The reference: each map's lower-middle pixel read from a full sort, as ``recentre_maps`` did before."""
    flat = x.flatten(2)
    return flat.sort(dim=-1).values[..., (flat.shape[-1] - 1) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch threads (a LOSO worker uses 1)")
    p.add_argument("--rounds", type=int, default=3, help="fits of each kind, interleaved; the median is kept")
    p.add_argument("--samples", type=int, default=400, help="training maps per fit (a fold has about 430)")
    p.add_argument("--repeats", type=int, default=200, help="calls per timing in table 1")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = default_recipe("epir")
    g = torch.Generator().manual_seed(0)
    batch = torch.rand(cfg.batch_size, 3, 28, 28, generator=g) * 255
    assert torch.equal(sort_median(batch[:, :2]), augment.map_median(batch[:, :2]))

    print(f"Table 1: one call on a batch of {cfg.batch_size} maps, {args.threads} thread(s), median of "
          f"{args.repeats} calls")
    print(f"{'what':<24}{'sort ms':>10}{'median ms':>11}{'ratio':>8}")
    s = median_ms(lambda: sort_median(batch[:, :2]), args.repeats)
    m = median_ms(lambda: augment.map_median(batch[:, :2]), args.repeats)
    print(f"{'the median alone':<24}{s:>10.3f}{m:>11.3f}{s / m:>8.2f}")
    original = augment.map_median
    augment.map_median = sort_median
    s = median_ms(lambda: augment.recentre_maps(batch), args.repeats)
    augment.map_median = original
    m = median_ms(lambda: augment.recentre_maps(batch), args.repeats)
    print(f"{'recentre_maps':<24}{s:>10.3f}{m:>11.3f}{s / m:>8.2f}")

    model_cfg = ModelConfig(name="epir", args=resolve_model_args("epir", {}))
    base = replace(cfg, distill="", select=(), select_shared=0)
    x = torch.rand(args.samples, 3, 28, 28, generator=g) * 255
    y = torch.arange(args.samples) % 3
    kinds = {"standardize": ("standardize", original), "recentre, sort": ("recentre", sort_median),
             "recentre, median": ("recentre", original)}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for name, (norm, median) in kinds.items():
            augment.map_median = median
            torch.manual_seed(0)
            model = build_model(model_cfg)
            t = time.perf_counter()
            fit(model, x, y, replace(base, input_norm=norm), seed=0, num_classes=3)
            times[name].append(time.perf_counter() - t)
    augment.map_median = original
    print(f"\nTable 2: one fit of the default EPIR recipe ({cfg.epochs} epochs, {args.samples} maps), median of "
          f"{args.rounds}")
    print(f"{'input_norm':<24}{'fit s':>10}{'vs standardize':>16}")
    ref = statistics.median(times["standardize"])
    for name, ts in times.items():
        print(f"{name:<24}{statistics.median(ts):>10.2f}{statistics.median(ts) / ref:>16.3f}")


if __name__ == "__main__":
    main()
