"""Pooling fold predictions into results: ``results.json``, ``predictions.csv``, MEGC2019 logs, tables."""
from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from epir.engine.metrics import megc_scores
from epir.errors import DatasetError, DatasetNotFoundError

HONEST = "honest"
ORACLE = "oracle-epoch (optimistic)"
FOLD_WEIGHTS = "fold-weights (given per-fold weights, no training)"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarize(
    predictions: pd.DataFrame,
    class_names: Sequence[str],
    protocol: str,
    absent: str = "skip",
) -> dict[str, Any]:
    """Metrics of pooled predictions, per seed and as mean and (sample) standard deviation over seeds.

    Args:
        predictions: one row per (seed, sample) with columns ``seed, subject, source, true, predicted``.
        class_names: class index -> name.
        protocol: ``honest``, ``oracle-epoch (optimistic)`` or the fold-weights label.
        absent: absent-class policy (see :mod:`epir.engine.metrics`).
    """
    k = len(class_names)
    per_seed = []
    caught: list[str] = []
    for seed, df in predictions.groupby("seed", sort=True):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            overall = megc_scores(df["true"], df["predicted"], k, absent)
            per_ds = {
                str(src): megc_scores(d["true"], d["predicted"], k, absent, context=f"per_dataset[{src}]")
                for src, d in df.groupby("source", sort=True)
            }
        caught += [f"seed {seed}: {x.message}" for x in w]
        per_seed.append(
            {
                "seed": int(seed),
                "uf1": overall["uf1"],
                "uar": overall["uar"],
                "accuracy": overall["accuracy"],
                "confusion": overall["confusion"],
                "per_dataset": {s: {"uf1": m["uf1"], "uar": m["uar"], "n": m["n"]} for s, m in per_ds.items()},
            }
        )
    for msg in dict.fromkeys(caught):
        warnings.warn(msg, stacklevel=2)
    out: dict[str, Any] = {"protocol": protocol}
    for key in ("uf1", "uar", "accuracy"):
        out[key], out[f"{key}_std"] = _mean_std([s[key] for s in per_seed])
    sources = sorted({s for r in per_seed for s in r["per_dataset"]})
    out["per_dataset"] = {}
    for src in sources:
        entry: dict[str, Any] = {}
        for key in ("uf1", "uar"):
            entry[key], entry[f"{key}_std"] = _mean_std([r["per_dataset"][src][key] for r in per_seed])
        entry["n"] = per_seed[0]["per_dataset"][src]["n"]
        out["per_dataset"][src] = entry
    out["seeds"] = [s["seed"] for s in per_seed]
    out["class_names"] = list(class_names)
    out["confusion"] = np.sum([s["confusion"] for s in per_seed], axis=0).tolist()
    subj = predictions.assign(correct=predictions["true"] == predictions["predicted"])
    out["per_subject"] = [
        {"subject": s, "n": int(len(d)) // len(per_seed), "accuracy": float(d["correct"].mean())}
        for s, d in subj.groupby("subject", sort=False)
    ]
    out["per_seed"] = per_seed
    out["absent_class_policy"] = absent
    out["warnings"] = list(dict.fromkeys(caught))
    return out


def write_megc_log(predictions: pd.DataFrame, path: Path, protocol: str) -> None:
    """MEGC2019 submission format: ``<db> <subject>`` per fold, then ``<clip> <gt> <pred>`` per sample.

    A leading ``#`` comment line states the protocol (readers skip ``#`` lines).
    """
    lines = [f"# protocol: {protocol}"]
    for (src, sid), df in predictions.groupby(["source", "subject_id"], sort=False):
        lines.append(f"{src} {sid}")
        lines += [f"{c} {t} {p}" for c, t, p in zip(df["clip"], df["true"], df["predicted"])]
    path.write_text("\n".join(lines) + "\n")


def read_megc_log(path: str | Path) -> pd.DataFrame:
    """Parse a MEGC2019 submission log into ``source, subject_id, subject, clip, true, predicted, seed``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"MEGC2019 log {path} does not exist.")
    rows, header = [], None
    for n, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) == 2:
            header = parts
        elif len(parts) == 3:
            if header is None:
                raise DatasetError(f"{path} line {n}: sample line {line!r} before any '<db> <subject>' header.")
            try:
                t, p = int(parts[1]), int(parts[2])
            except ValueError:
                raise DatasetError(
                    f"{path} line {n}: {line!r}; expected '<clip> <gt> <pred>' with integer labels."
                ) from None
            rows.append((header[0], header[1], f"{header[0]}/{header[1]}", parts[0], t, p, 0))
        else:
            raise DatasetError(
                f"{path} line {n}: {line!r}; expected '<db> <subject>' or '<clip> <gt> <pred>'."
            )
    if not rows:
        raise DatasetError(f"{path}: no predictions found.")
    return pd.DataFrame(rows, columns=["source", "subject_id", "subject", "clip", "true", "predicted", "seed"])


def write_results(out_dir: Path, results: dict[str, Any], predictions: pd.DataFrame) -> None:
    """Write ``results.json``, ``predictions.csv`` and ``megc_log.txt`` (plus one log per seed if several)."""
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    predictions.to_csv(out_dir / "predictions.csv", index=False)
    seeds = sorted(predictions["seed"].unique())
    label = results["protocol"] + (f"; evaluation: {results['evaluation']}" if results.get("evaluation") else "")
    write_megc_log(predictions[predictions["seed"] == seeds[0]], out_dir / "megc_log.txt", label)
    if len(seeds) > 1:
        for s in seeds:
            write_megc_log(predictions[predictions["seed"] == s], out_dir / f"megc_log_seed{s}.txt", label)


def format_summary(results: dict[str, Any], title: str = "") -> str:
    """A readable table: overall and per-dataset UF1/UAR (mean ± std over seeds)."""
    def cell(entry: dict[str, Any], key: str) -> str:
        std = entry.get(f"{key}_std", 0.0)
        return f"{entry[key]:.4f} ± {std:.4f}" if len(results.get("seeds", [0])) > 1 else f"{entry[key]:.4f}"

    rows = [("all", results.get("n", sum(e["n"] for e in results["per_dataset"].values())), results)]
    rows += [(src, e["n"], e) for src, e in results["per_dataset"].items()]
    head = f"{'dataset':<12} {'n':>5}  {'UF1':>17}  {'UAR':>17}"
    lines = []
    if title:
        lines.append(title)
    evaluation = f"   evaluation: {results['evaluation']}" if results.get("evaluation") else ""
    lines.append(f"protocol: {results['protocol']}{evaluation}   seeds: {results.get('seeds')}")
    lines += [head, "-" * len(head)]
    lines += [f"{name:<12} {n:>5}  {cell(e, 'uf1'):>17}  {cell(e, 'uar'):>17}" for name, n, e in rows]
    if results.get("input_transform"):
        t = results["input_transform"]
        lines.append(f"input transform: {t.get('input_transform')} (landmarks: {t.get('landmarks', 'n/a')})")
    if "accuracy" in results:
        lines.append(f"accuracy {results['accuracy']:.4f}")
    if results["protocol"] == ORACLE:
        lines.append("NOTE: oracle-epoch (optimistic): the epoch was chosen on each held-out subject's test data.")
    return "\n".join(lines)
