"""Tables of several runs (ablation arms, compared models): one row per run, markdown and CSV."""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import pandas as pd

from epir.config import RunConfig
from epir.engine.cost import input_shape, prediction_cost, prediction_module
from epir.engine.records import LosoResults
from epir.models import build_model
from epir.profiling import measure_latency, torch_threads


def run_row(name: str, results: dict[str, Any], cfg: RunConfig) -> dict[str, Any]:
    """One row: overall and per-dataset UF1/UAR (mean and std over seeds), parameters and FLOPs (the model's, and
    ``params_total`` and ``flops_total``: every network that predicts, :func:`epir.engine.cost.prediction_cost`),
    time. Latencies are measured for all of a table's rows at once, under the same load (:func:`add_latencies`).
    """
    record = LosoResults.from_json(results)
    o = record.overall
    row: dict[str, Any] = {"name": name, "uf1": o.uf1, "uf1_std": o.uf1_std, "uar": o.uar, "uar_std": o.uar_std}
    for key in ("uf1", "uar"):
        ci = getattr(o, f"{key}_ci")
        if ci is not None:
            row.update({f"{key}_ci_low": ci[0], f"{key}_ci_high": ci[1]})
    for src, e in record.per_dataset.items():
        row.update({f"{src}_uf1": e.uf1, f"{src}_uf1_std": e.uf1_std, f"{src}_uar": e.uar, f"{src}_uar_std": e.uar_std})
    cost = prediction_cost(cfg, input_shape(cfg))
    row.update(params=cost.params, params_total=max(cost.params_total, int(results.get("params_total") or 0)),
               flops_per_sample=cost.flops, flops_total=cost.flops_total)
    row.update(fold_seconds=results.get("fold_seconds"), wall_seconds=record.wall_seconds, protocol=record.protocol,
               evaluation=record.evaluation, n_folds=record.n_folds, seeds=" ".join(map(str, record.seeds)))
    return row


def own_and_total(own: int, total: int | None) -> str:
    """A figure of the model and of the whole when more networks predict or a prediction takes more passes
    (``99,585 (all 104,634)``: a mixed-in teacher, ensemble members, test-time flips; issue 13 counts a teacher
    separately and reports an ensemble's total). Parameters and FLOPs alike; ``total`` None or equal: the model's.
    """
    return f"{own:,}" if total is None or total == own else f"{own:,} (all {total:,})"


#: The name of :func:`own_and_total` before it covered FLOPs too.
params_cell = own_and_total


def add_latencies(rows: list[dict[str, Any]], configs: Sequence[RunConfig], *, rounds: int = 5,
                  repeats: int = 10) -> None:
    """Set each row's ``latency_ms_b1``: the CPU forward latency at batch 1 of its config's model (ms), and
    ``latency_total_ms_b1``: that of one whole prediction of its recipe (:func:`epir.engine.cost.prediction_module`:
    the input transform, every member, the test-time flip, a teacher mixed in), on one torch thread.

    Both are measured after every run finished and interleaved, ``rounds`` times each module for ``repeats`` calls
    in turn, the median of the rounds' medians. Load from elsewhere on the machine then slows every row alike, so
    that the rows compare, and identical networks (two recipes of one model) read alike; one thread, because threads
    that wait for cores other processes hold slow a batch-1 forward pass a hundredfold.
    """
    modules = [m for cfg in configs for m in (build_model(cfg.model).eval(), prediction_module(cfg))]
    times: list[list[float]] = [[] for _ in modules]
    with torch_threads(1):
        for _ in range(rounds):
            for module, t in zip(modules, times):
                t.append(measure_latency(module, batch_size=1, repeats=repeats, warmup=2))
    for i, row in enumerate(rows):
        row["latency_ms_b1"] = statistics.median(times[2 * i])
        row["latency_total_ms_b1"] = statistics.median(times[2 * i + 1])


def latency_cell(r: Any) -> str:
    """The model's latency at batch 1 and, where a prediction runs more than it, the whole's: ``1.190 (all
    2.915)`` (ms; :func:`add_latencies`).
    """
    own, total = float(r["latency_ms_b1"]), r.get("latency_total_ms_b1")
    same = total is None or pd.isna(total) or _one_network(r)
    return f"{own:.3f}" if same else f"{own:.3f} (all {float(total):.3f})"


def _one_network(r: Any) -> bool:
    """Whether one prediction of the row is its model's one forward pass (no member, flip, teacher or transform)."""
    own, total = _total(r.get("flops_per_sample")), _total(r.get("flops_total"))
    return own is not None and own == total and int(r["params"]) == int(r["params_total"])


def _total(value: Any) -> int | None:
    """A table's ``*_total`` cell as an int, None where a run did not record it (NaN in a frame)."""
    return None if value is None or pd.isna(value) else int(value)


def differences_markdown(diffs: list[dict[str, Any]]) -> str:
    """The differences of :func:`epir.engine.evaluate.differences` as a markdown table (empty text when there are
    none).
    """
    if not diffs:
        return ""
    pct = f"{diffs[0]['level']:.0%}"
    family = len(diffs) > 1  # the rows of epir.engine.evaluate.differences, each with its Holm-adjusted p
    head = ["A - B"]
    for metric in ("UF1", "UAR"):
        head += [f"{metric} difference [{pct} CI]", "P(A not better)"] + (["Holm"] if family else [])
    lines = [f"Differences, paired subject bootstrap ({diffs[0]['subjects']} subjects, {diffs[0]['resamples']} "
             f"resamples; an interval that holds 0 is not a difference"
             + (f"; Holm: P(A not better) adjusted for the {len(diffs)} comparisons" if family else "") + "):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in diffs:
        cells = [" - ".join(d["names"])]
        for key in ("uf1", "uar"):
            r = d[key]
            cells += [f"{r['difference']:+.4f} [{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}]", f"{r['p_not_better']:.3f}"]
            cells += [f"{r['p_holm']:.3f}"] if family else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fmt_mean_std(mean: float, std: float, single: bool = False) -> str:
    """``mean ± std`` at 4 decimals; just the mean for a single seed (no spread to report)."""
    return f"{mean:.4f}" if single else f"{mean:.4f} ± {std:.4f}"


def own_and_total_of(r: Any, key: str, total: str) -> str | None:
    """:func:`own_and_total` of a run's ``key`` and ``total`` figures (a results mapping or a table row), e.g.
    ``params`` and ``params_total``; None where the run did not record ``key`` (a model the FLOP counter cannot
    trace).
    """
    own = _total(r.get(key))
    return None if own is None else own_and_total(own, _total(r.get(total)))


def flops_cell(r: pd.Series) -> str:
    """FLOPs per sample of the model and of one whole prediction; '-' where the FLOP counter could not trace it."""
    return own_and_total_of(r, "flops_per_sample", "flops_total") or "-"


def to_markdown(table: pd.DataFrame, first: str = "name") -> str:
    """The table as markdown, with mean ± std cells; ``first`` is the first column's heading."""
    sources = sorted({c[: -len("_uf1")] for c in table.columns if c.endswith("_uf1") and c != "uf1"})
    head = [first, "UF1", "UAR"] + [f"{s} {m}" for s in sources for m in ("UF1", "UAR")]
    head += ["params", "FLOPs/sample"] + (["ms @ b1"] if "latency_ms_b1" in table else []) + ["s/fold"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        one = len(str(r.get("seeds", "0 1")).split()) == 1  # one seed: no spread to report
        cells = [str(r[first if first in table else "name"]), fmt_mean_std(r["uf1"], r["uf1_std"], one),
                 fmt_mean_std(r["uar"], r["uar_std"], one)]
        cells += [fmt_mean_std(r[f"{s}_{m}"], r[f"{s}_{m}_std"], one) for s in sources for m in ("uf1", "uar")]
        cells += [own_and_total(int(r["params"]), int(r["params_total"])), flops_cell(r)]
        if "latency_ms_b1" in table:
            cells.append(latency_cell(r))
        cells.append(f"{r['fold_seconds']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
