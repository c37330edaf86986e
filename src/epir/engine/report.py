"""The paper-style results table: a row per model (and protocol), CDE and SDE columns, from finished runs.

Illustration (needs the data it names; not run as a doctest)::

    from epir.engine.report import build_report, write_report
    table = build_report(["runs/epir-cde", "runs/epir-sde-casme2", "runs/compare-megc2019-..."])
    write_report(table, "runs/report")   # report.md, report.csv, report.tex

Each run directory (``config.yaml`` + ``results.json``, as ``epir loso`` writes it; a ``compare`` or ``ablate``
directory stands for the runs inside it) fills the cells of one row:

- a **CDE** run (one LOSO over the composite) gives the *Full* columns (all samples pooled) and one
  ``CDE <dataset>`` pair per source dataset (its samples' pooled predictions from that same LOSO);
- an **SDE** run (``--subset casme2``: LOSO inside one dataset alone) gives the ``SDE casme2`` pair.

Rows are keyed by the model, every setting that differs from the model's default (recipe, arguments, input
transform) and the protocol: runs of the optimistic ``--oracle-epoch`` protocol (or given per-fold weights)
get their own row, marked with a symbol and a footnote, and are never merged with honest ones. Two runs for the
same cell are an error. Cells are mean ± std over the run's seeds; a run over a subset of folds is marked.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from epir.config import RunConfig
from epir.engine.cost import input_shape, prediction_cost
from epir.engine.loso import evaluation_of
from epir.engine.records import LosoResults
from epir.engine.report_html import write_table_report
from epir.engine.results import FOLD_WEIGHTS, HONEST, ORACLE
from epir.engine.tables import flops_cell, fmt_mean_std, own_and_total
from epir.errors import ConfigError, DatasetError, DatasetNotFoundError
from epir.fileio import writable_dir
from epir.models import default_recipe, list_recipes, model_defaults

#: Display names of the source datasets (markdown/CSV, LaTeX), in the order of the field's tables.
DATASET_NAMES = {"casme2": ("CASME II", "CASME II"), "samm": ("SAMM", "SAMM"), "smic": ("SMIC", "SMIC"),
                 "casme3": ("CAS(ME)^3", "CAS(ME)$^3$")}
#: Symbols marking protocols other than honest (with their footnotes).
MARKS = {ORACLE: ("†", r"$^\dagger$", "oracle-epoch (optimistic): the epoch was chosen per held-out subject "
                                      "on its own test data; not comparable with honest rows"),
         FOLD_WEIGHTS: ("‡", r"$^\ddagger$", "given per-fold weights evaluated, no training")}
PARTIAL = ("*", r"$^*$", "run on a subset of the LOSO folds")


def find_runs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Run directories: each path itself, or (for a compare/ablate directory) the run directories inside it."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if (p / "results.json").is_file():
            runs.append(p)
            continue
        if not p.is_dir():
            raise DatasetNotFoundError(f"epir report: {p} does not exist; expected a run directory "
                                       f"(with results.json) or a compare/ablate directory holding some.")
        inner = sorted(d for d in p.iterdir() if (d / "results.json").is_file())
        if not inner:
            raise DatasetNotFoundError(f"epir report: {p} holds no results.json (nor do its subdirectories); "
                                       f"is it a finished epir run directory?")
        runs += inner
    return runs


def _evaluation(cfg: RunConfig, results: dict[str, Any]) -> str:
    return str(results.get("evaluation") or evaluation_of(cfg))


def config_label(cfg: RunConfig) -> str:
    """The model's name plus whatever differs from its defaults: ``htnet (recipe cpu; mosaic input)``.

    A recipe is named by the registered recipe it differs least from (the default on a tie), then the settings it
    changes: ``epir (recipe alone; train.epochs=2)`` rather than the many settings by which ``alone`` differs from the
    default.
    """
    name = cfg.model.name
    parts = []
    train = asdict(cfg.train)
    bases = {recipe: asdict(default_recipe(name, recipe)) for recipe in list_recipes(name)}  # "default" first
    changed = {recipe: [f"train.{k}={v}" for k, v in train.items() if base.get(k) != v]
               for recipe, base in bases.items()}
    nearest = min(changed, key=lambda r: len(changed[r]))  # the first of the fewest: the default on a tie
    if nearest != "default":
        parts.append(f"recipe {nearest}")
    parts += changed[nearest]
    defaults = model_defaults(name)
    parts += [f"{k}={v}" for k, v in sorted(cfg.model.args.items())
              if k in defaults and _norm(defaults[k]) != _norm(v)]
    if cfg.data.input_transform != "none":
        parts.append(f"{cfg.data.input_transform} input")
    return f"{name} ({'; '.join(parts)})" if parts else name


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, (tuple, list)) else v


def build_report(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """One row per (model configuration, protocol); see the module docstring for the columns.

    CSV columns: ``model, protocol, full_uf1, full_uf1_std, full_uar, full_uar_std``, then
    ``cde_<ds>_uf1[_std]``, ``cde_<ds>_uar[_std]`` and ``sde_<ds>_...`` per dataset, ``params``,
    ``params_total`` (every network that predicts: a mixed-in teacher, ensemble members), ``flops_per_sample``,
    ``flops_total`` (one whole prediction: every network that predicts, each forward pass; see
    :func:`epir.engine.cost.prediction_cost`),
    ``seeds``, ``partial`` (evaluations run on a subset of folds) and ``runs``; last, ``full_uf1_ci_low``,
    ``full_uf1_ci_high`` (and ``uar``, and the same per ``sde_<ds>``): each run's subject-bootstrap interval
    (empty for runs written before round 14).
    """
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    sources: list[str] = []
    sde: list[str] = []
    for run in find_runs(paths):
        try:
            cfg = RunConfig.load(run / "config.yaml")
            results = json.loads((run / "results.json").read_text())
        except (OSError, ValueError) as e:
            raise DatasetError(f"epir report: cannot read the run in {run}: {e}") from None
        missing = {"uf1", "uar", "protocol", "per_dataset"} - set(results)
        if missing:
            raise DatasetError(f"epir report: {run / 'results.json'} lacks {sorted(missing)}; rerun the run's "
                               f"`epir loso` command with --out {run} (its finished folds are kept).")
        LosoResults.from_json(results, str(run / "results.json"))  # every score a number in [0, 1]
        label, protocol = config_label(cfg), results["protocol"]
        row = rows.get((label, protocol))
        if row is None:
            cost = prediction_cost(cfg, input_shape(cfg))
            row = rows[(label, protocol)] = {
                "model": label, "protocol": protocol, "params": cost.params, "flops_per_sample": cost.flops,
                "flops_total": cost.flops_total, "seeds": set(), "partial": [], "runs": [], "_cells": {}, "_ci": {},
                "params_total": cost.params_total,
            }
        # every network that predicts (a mixed-in teacher, ensemble members): results.json's params_total
        row["params_total"] = max(row["params_total"], int(results.get("params_total", row["params"])))
        evaluation = _evaluation(cfg, results)
        cells: dict[str, tuple[float, float]] = {}
        if evaluation == "CDE":
            row["_ci"]["full"] = {key: results.get(f"{key}_ci") for key in ("uf1", "uar")}
            for key in ("uf1", "uar"):
                cells[f"full_{key}"] = (results[key], results.get(f"{key}_std", 0.0))
            for src, entry in results["per_dataset"].items():
                sources.append(src)
                for key in ("uf1", "uar"):
                    cells[f"cde_{src}_{key}"] = (entry[key], entry.get(f"{key}_std", 0.0))
        else:
            src = evaluation[len("SDE("):-1]
            sde.append(src)
            row["_ci"][f"sde_{src}"] = {key: results.get(f"{key}_ci") for key in ("uf1", "uar")}
            for key in ("uf1", "uar"):
                cells[f"sde_{src}_{key}"] = (results[key], results.get(f"{key}_std", 0.0))
        for k, v in cells.items():
            if k in row["_cells"]:
                raise ConfigError(
                    f"epir report: two runs give {label!r} ({protocol}) {evaluation}: {row['_cells'][k][1]} "
                    f"and {run}. Pass only one of them (or run them with different settings)."
                )
            row["_cells"][k] = (v, run)
        row["seeds"].update(results.get("seeds", []))
        if cfg.eval.folds:
            row["partial"].append(f"{evaluation} ({results.get('n_folds', len(cfg.eval.folds))} folds)")
        row["runs"].append(str(run))
    order = {s: i for i, s in enumerate(DATASET_NAMES)}
    src_order = sorted(dict.fromkeys(sources), key=lambda s: (order.get(s, 99), s))
    sde_order = sorted(dict.fromkeys(sde), key=lambda s: (order.get(s, 99), s))
    columns = ["full"] + [f"cde_{s}" for s in src_order] + [f"sde_{s}" for s in sde_order]
    out = []
    for row in rows.values():
        flat = {"model": row["model"], "protocol": row["protocol"]}
        for col in columns:
            for key in ("uf1", "uar"):
                v = row["_cells"].get(f"{col}_{key}")
                flat[f"{col}_{key}"], flat[f"{col}_{key}_std"] = (v[0][0], v[0][1]) if v else (None, None)
        flat.update(params=row["params"], params_total=row["params_total"],
                    flops_per_sample=row["flops_per_sample"], flops_total=row["flops_total"],
                    seeds=" ".join(map(str, sorted(row["seeds"]))), partial="; ".join(row["partial"]),
                    runs=" ".join(row["runs"]))
        for col in columns:  # the subject-bootstrap intervals of whole runs (results.json uf1_ci / uar_ci), last
            if not col.startswith("cde_"):
                for key in ("uf1", "uar"):
                    ci = row["_ci"].get(col, {}).get(key) or (None, None)
                    flat[f"{col}_{key}_ci_low"], flat[f"{col}_{key}_ci_high"] = ci
        out.append(flat)
    table = pd.DataFrame(out)
    table.attrs["groups"] = columns
    return table


def _groups(table: pd.DataFrame) -> list[str]:
    return table.attrs.get("groups") or sorted({c[: -len("_uf1")] for c in table.columns if c.endswith("_uf1")})


def _heading(group: str, latex: bool = False) -> str:
    if group == "full":
        return "Full (CDE)"
    kind, src = group.split("_", 1)
    names = DATASET_NAMES.get(src)
    name = names[1 if latex else 0] if names else src
    return f"{name} ({kind.upper()})"


def _cell(mean: Any, std: Any, latex: bool = False, single: bool = False) -> str:
    """``mean ± std``; just the mean for a single seed (no spread to report)."""
    if mean is None or pd.isna(mean):
        return "–" if not latex else "--"
    text = fmt_mean_std(mean, std, single)
    return text.replace("±", "$\\pm$") if latex else text


def _name(r: pd.Series, latex: bool = False) -> str:
    name = r["model"].replace("_", r"\_") if latex else r["model"]
    if r["protocol"] in MARKS:
        name += MARKS[r["protocol"]][1 if latex else 0]
    if r.get("partial"):
        name += PARTIAL[1 if latex else 0]
    return name


def _footnotes(table: pd.DataFrame, latex: bool = False) -> list[str]:
    notes = []
    for protocol, (md, tex, text) in MARKS.items():
        if (table["protocol"] == protocol).any():
            notes.append(f"{tex if latex else md} {text}.")
    partial = table[table["partial"].astype(bool)]
    if len(partial):
        which = "; ".join(f"{r['model']}: {r['partial']}" for _, r in partial.iterrows())
        notes.append(f"{PARTIAL[1] if latex else PARTIAL[0]} {PARTIAL[2]} ({which}).")
    honest = (table["protocol"] == HONEST).all()
    notes.insert(0, "All rows: honest LOSO (no choice made on held-out subjects)." if honest else
             "Unmarked rows: honest LOSO (no choice made on held-out subjects).")
    return notes


def _params(r: pd.Series) -> str:
    """The model's parameters, and the whole's when more networks predict (:func:`epir.engine.tables.own_and_total`)."""
    return own_and_total(int(r["params"]), int(r.get("params_total", r["params"])))


def to_markdown(table: pd.DataFrame) -> str:
    """The report as a markdown table (UF1 and UAR per group, mean ± std) with footnotes."""
    groups = _groups(table)
    head = ["Model"] + [f"{_heading(g)} {m}" for g in groups for m in ("UF1", "UAR")] + ["Params", "FLOPs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        one = len(str(r["seeds"]).split()) == 1
        cells = [_name(r)] + [_cell(r[f"{g}_{m}"], r[f"{g}_{m}_std"], single=one)
                              for g in groups for m in ("uf1", "uar")]
        cells += [_params(r), flops_cell(r)]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [*_footnotes(table), "Cells: mean ± std over seeds (one seed: the value)."]
    return "\n".join(lines) + "\n\n" + "\n".join(f"{n}  " for n in notes) + "\n"


def to_latex(table: pd.DataFrame) -> str:
    """The report as a LaTeX ``table`` (booktabs): a column pair UF1/UAR under each group heading."""
    groups = _groups(table)
    spec = "l" + "cc" * len(groups) + "rr"
    top = " & ".join(f"\\multicolumn{{2}}{{c}}{{{_heading(g, True)}}}" for g in groups)
    rules = "".join(f"\\cmidrule(lr){{{2 + 2 * i}-{3 + 2 * i}}}" for i in range(len(groups)))
    lines = [
        "% requires \\usepackage{booktabs}",
        "\\begin{table}[t]", "\\centering", "\\scriptsize", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
        f"Model & {top} & Params & FLOPs \\\\", rules,
        " & " + " & ".join(["UF1 & UAR"] * len(groups)) + " & & \\\\", "\\midrule",
    ]
    for _, r in table.iterrows():
        one = len(str(r["seeds"]).split()) == 1
        cells = [_name(r, True)] + [_cell(r[f"{g}_{m}"], r[f"{g}_{m}_std"], True, one)
                                    for g in groups for m in ("uf1", "uar")]
        cells += [_params(r).replace(",", "{,}"), flops_cell(r).replace(",", "{,}")]
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}",
              "\\caption{" + " ".join(_footnotes(table, True))
              + " Mean $\\pm$ std over seeds (one seed: the value).}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def write_report(table: pd.DataFrame, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.md``, ``report.csv`` and ``report.tex`` into ``out_dir``; returns their paths."""
    out = writable_dir(out_dir, "report folder")
    paths = {"md": out / "report.md", "csv": out / "report.csv", "tex": out / "report.tex"}
    paths["md"].write_text(to_markdown(table))
    table.to_csv(paths["csv"], index=False)
    paths["tex"].write_text(to_latex(table))
    paths["html"] = write_table_report(out, "Results (paper-style table)", to_markdown(table))
    return paths


__all__ = ["build_report", "config_label", "find_runs", "to_latex", "to_markdown", "write_report"]
