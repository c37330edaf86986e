"""Recompute metrics from a run directory's predictions or from a MEGC2019 submission log."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from epir.config import RunConfig
from epir.data.base import COMPOSITE_CLASSES
from epir.engine.loso import evaluation_of
from epir.engine.results import ORACLE, UNKNOWN, read_megc_log, read_megc_log_meta, read_predictions, summarize
from epir.errors import DatasetNotFoundError


def evaluate_run_dir(run_dir: str | Path) -> dict[str, Any]:
    """Metrics of ``RUN_DIR/predictions.csv`` with the run's protocol and absent-class policy."""
    run = Path(run_dir)
    path = run / "predictions.csv"
    if run.is_file():
        raise DatasetNotFoundError(f"{run} is a file, not a run directory; for a MEGC2019 submission log use "
                                   f"`epir evaluate --megc-log {run}`.")
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} does not exist; is {run} a finished epir run directory?")
    preds, class_names = read_predictions(path)
    protocol, absent, evaluation = UNKNOWN, "skip", None
    if (run / "config.yaml").is_file():
        cfg = RunConfig.load(run / "config.yaml")
        absent = cfg.eval.absent_class
        evaluation = evaluation_of(cfg)
        protocol = ORACLE if cfg.eval.oracle_epoch else protocol
    if "protocol" in preds.columns and preds["protocol"].nunique() == 1:
        protocol = str(preds["protocol"].iloc[0])
    if (run / "results.json").is_file():
        protocol = json.loads((run / "results.json").read_text()).get("protocol", protocol)
    results = summarize(preds, class_names, protocol, absent)
    results["n"] = int(len(preds) // preds["seed"].nunique())
    if evaluation:
        results["evaluation"] = evaluation
    return results


def evaluate_megc_log(path: str | Path, absent: str = "skip") -> dict[str, Any]:
    """Metrics of a MEGC2019 submission log (labels 0..K-1; three classes are named as the composite's)."""
    preds = read_megc_log(path)
    meta = read_megc_log_meta(path)
    names = meta["classes"] or list(COMPOSITE_CLASSES)
    protocol, evaluation = meta["protocol"], meta["evaluation"]
    results = summarize(preds, names, protocol, absent)
    results["n"] = int(len(preds))
    if evaluation:
        results["evaluation"] = evaluation
    return results
