"""``report.html``: one self-contained page per run directory (images embedded, no network), and PNGs beside
it for papers.

The page shows the results table (overall and per source dataset, mean ± std over seeds, with the protocol and
evaluation labels of ``results.json``), the pooled confusion matrix, per-dataset bars, per-subject accuracy
bars (subjects sorted by score, sample counts shown), the spread of the seeds, the training curves (per epoch,
median and inter-quartile band over folds), parameters / FLOPs / time, and the exact command and configuration.
An oracle-epoch run is marked optimistic at the top. Colours are fixed per class and per metric across every
figure (:data:`CLASS_COLOURS`, :data:`METRIC_COLOURS`).
"""
from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from epir.engine.records import LosoResults
from epir.engine.results import blend_parts, ensemble_members
from epir.engine.tables import own_and_total_of
from epir.engine.uncertainty import describe_ci, format_interval

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: One colour per composite class, used in every figure (others cycle through the tab10 palette).
CLASS_COLOURS = {"negative": "#d62728", "positive": "#2ca02c", "surprise": "#1f77b4"}
#: One colour per metric.
METRIC_COLOURS = {"uf1": "#4c72b0", "uar": "#dd8452", "accuracy": "#55a868"}
SOURCE_ORDER = ("casme2", "samm", "smic", "casme3", "synthetic")
FIGURES = "figures"

#: What the page says for a run without training curves.
NO_CURVES = "<p>No training curves (published weights, or a run from before curves were kept).</p>"


def class_colour(name: str, index: int) -> str:
    """The colour of class ``name`` (index ``index``) in every figure."""
    from matplotlib import colormaps  # noqa: PLC0415 (matplotlib loaded only when drawing, after the Agg backend is chosen)

    if name in CLASS_COLOURS:
        return CLASS_COLOURS[name]
    r, g, b, _ = colormaps["tab10"](index % 10)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def _fig() -> ModuleType:
    """``matplotlib.pyplot`` with the Agg backend (no display needed)."""
    import matplotlib  # noqa: PLC0415 (matplotlib loaded only when drawing, after the Agg backend is chosen)

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # noqa: PLC0415 (matplotlib loaded only when drawing, after the Agg backend is chosen)

    return plt


def _save(fig: Figure, folder: Path, name: str) -> str:
    """Save ``fig`` as ``folder/name.png`` and return it as a data URI for the page."""
    plt = _fig()
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = buf.getvalue()
    (folder / f"{name}.png").write_bytes(data)
    return "data:image/png;base64," + base64.b64encode(data).decode()


def confusion_plot(confusion: Sequence[Sequence[int]], class_names: Sequence[str],
                   title: str = "Confusion matrix (counts, row %)") -> Figure:
    """The row-normalised confusion matrix with counts, class names in their colours (a matplotlib Figure);
    the one drawing of it, for run reports and ``epir compare``.
    """
    plt = _fig()
    cm = np.asarray(confusion, dtype=float)
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{int(cm[i, j])}\n{rows[i, j]:.0%}", ha="center", va="center", fontsize=9,
                    color="white" if rows[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    for tick, (i, name) in zip(ax.get_yticklabels(), enumerate(class_names)):
        tick.set_color(class_colour(name, i))
    for tick, (i, name) in zip(ax.get_xticklabels(), enumerate(class_names)):
        tick.set_color(class_colour(name, i))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    return fig


def confusion_figure(confusion: Sequence[Sequence[int]], class_names: Sequence[str], folder: Path) -> str:
    return _save(confusion_plot(confusion, class_names), folder, "confusion")


def dataset_figure(results: dict[str, Any], folder: Path) -> str:
    plt = _fig()
    record = LosoResults.from_json(results)
    scores = dict(record.rows())
    per = record.per_dataset
    names = ["all"] + [s for s in SOURCE_ORDER if s in per] + sorted(set(per) - set(SOURCE_ORDER))
    fig, ax = plt.subplots(figsize=(1.4 + 1.2 * len(names), 3.4))
    x = np.arange(len(names))
    for k, metric in enumerate(("uf1", "uar")):
        vals = [getattr(scores[n], metric) for n in names]
        errs = [getattr(scores[n], f"{metric}_std") for n in names]
        ax.bar(x + (k - 0.5) * 0.38, vals, 0.38, yerr=errs, capsize=3, color=METRIC_COLOURS[metric],
               label=metric.upper())
    counts = [scores[n].n for n in names]
    ax.set_xticks(x, [f"{n}\n(n={c})" for n, c in zip(names, counts)])
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (0-1)")
    ax.set_title("UF1 and UAR per source dataset (mean ± std over seeds)")
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, folder, "per_dataset")


def subject_figure(results: dict[str, Any], folder: Path) -> str:
    plt = _fig()
    subjects = sorted(results.get("per_subject", []), key=lambda r: (r["accuracy"], r["n"]))
    height = max(3.0, 0.16 * len(subjects) + 1)
    fig, ax = plt.subplots(figsize=(6.5, height))
    y = np.arange(len(subjects))
    sources = [s["subject"].split("/", 1)[0] for s in subjects]
    palette = {src: f"C{i}" for i, src in enumerate(dict.fromkeys(SOURCE_ORDER + tuple(sorted(set(sources)))))}
    ax.barh(y, [s["accuracy"] for s in subjects], color=[palette[s] for s in sources])
    for yi, s in zip(y, subjects):
        ax.text(s["accuracy"] + 0.01, yi, f"n={s['n']}", va="center", fontsize=6)
    ax.set_yticks(y, [s["subject"] for s in subjects], fontsize=6)
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("accuracy on the held-out subject (pooled over seeds)")
    ax.set_title("Per held-out subject, sorted by score (colour: source dataset)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette[s]) for s in dict.fromkeys(sources)]
    ax.legend(handles, list(dict.fromkeys(sources)), loc="lower right", fontsize=7)
    return _save(fig, folder, "per_subject")


def seed_figure(results: dict[str, Any], folder: Path) -> str:
    plt = _fig()
    per_seed = results.get("per_seed", [])
    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    for k, metric in enumerate(("uf1", "uar")):
        vals = [s[metric] for s in per_seed]
        ax.scatter(np.full(len(vals), k) + np.linspace(-0.08, 0.08, len(vals)), vals, color=METRIC_COLOURS[metric],
                   s=40, zorder=3)
        for s, v in zip(per_seed, vals):
            ax.annotate(f"seed {s['seed']}", (k + 0.12, v), fontsize=7, va="center")
        ax.hlines(np.mean(vals), k - 0.2, k + 0.2, color=METRIC_COLOURS[metric])
    every = [s[m] for s in per_seed for m in ("uf1", "uar")]
    if every:  # a readable range: at least 0.1 wide, inside 0-1
        mid = (min(every) + max(every)) / 2
        half = max(0.05, (max(every) - min(every)) / 2 + 0.02)
        ax.set_ylim(max(0.0, mid - half), min(1.0, mid + half))
    ax.set_xticks([0, 1], ["UF1", "UAR"])
    ax.set_xlim(-0.5, 1.8)
    ax.set_ylabel("score (0-1)")
    ax.set_title(f"Spread over {len(per_seed)} seed(s) (line: mean)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, folder, "seeds")


def curves_figure(curves: pd.DataFrame, folder: Path) -> str | None:
    if curves.empty:
        return None
    plt = _fig()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, col, label in ((axes[0], "loss", "training loss"), (axes[1], "acc", "training accuracy")):
        g = curves.groupby("epoch")[col]
        med, lo, hi = g.median(), g.quantile(0.25), g.quantile(0.75)
        ax.plot(med.index + 1, med.values, color="#333333", label="median over folds")
        ax.fill_between(med.index + 1, lo.values, hi.values, color="#999999", alpha=0.35, label="25-75%")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[1].set_ylim(0, 1)
    fig.suptitle(f"Training curves ({curves.groupby(['seed', 'subject']).ngroups} folds; the fold's training "
                 f"subjects only)")
    return _save(fig, folder, "training_curves")


def _fmt(mean: float, std: float | None, seeds: int) -> str:
    return f"{mean:.4f}" if seeds <= 1 or std is None else f"{mean:.4f} ± {std:.4f}"


def results_table(results: dict[str, Any]) -> str:
    """The overall and per-dataset UF1/UAR as an HTML table (mean ± std with several seeds)."""
    record = LosoResults.from_json(results)
    seeds = len(record.seeds)
    shown = record.overall.uf1_ci is not None
    body = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{s.n}</td><td>{_fmt(s.uf1, s.uf1_std, seeds)}</td>"
        f"<td>{_fmt(s.uar, s.uar_std, seeds)}</td>"
        + (f"<td>{format_interval(s.uf1_ci)}</td><td>{format_interval(s.uar_ci)}</td>" if shown else "") + "</tr>"
        for name, s in record.rows()
    )
    head = "<tr><th>dataset</th><th>n</th><th>UF1</th><th>UAR</th>"
    note = ""
    if shown:
        meta: dict[str, Any] = results["ci"] if isinstance(results.get("ci"), dict) else {}
        pct = f"{meta.get('level', 0.95):.0%} CI"
        head += f"<th>UF1 {pct}</th><th>UAR {pct}</th>"
        note = (f"<p>CI: {html.escape(describe_ci(meta))}: how far the score moves with the subjects drawn. Two runs "
                "are compared with <code>epir evaluate RUN --versus OTHER</code>.</p>")
    return f"<table>{head}</tr>{body}</table>{note}"


STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 24px auto; max-width: 1100px;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
td:first-child, th:first-child { text-align: left; } th { background: #f3f3f3; }
.label { display: inline-block; padding: 2px 8px; border-radius: 4px; background: #e8f0fe; margin-right: 6px; }
.optimistic { background: #fde2e1; color: #a50e0e; font-weight: bold; padding: 10px; border-radius: 6px; }
.grid { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; } img { max-width: 100%; }
pre { background: #f6f8fa; padding: 10px; overflow-x: auto; font-size: 12px; }
"""


def _wall(results: dict[str, Any]) -> str | None:
    """The run's wall time, saying how many of its folds were resumed from an earlier run (they took no time here)
    and, where earlier invocations took time too, the total over all of them (``wall_seconds_total``).
    """
    if "wall_seconds" not in results:
        return None
    text = f"{results['wall_seconds']:.0f}"
    resumed = int(results.get("resumed_folds") or 0)
    notes = [f"{resumed} folds resumed from an earlier run, not timed here"] if resumed else []
    total = results.get("wall_seconds_total")
    if isinstance(total, (int, float)) and round(total) != round(results["wall_seconds"]):
        notes.append(f"{total:.0f} over every invocation of the run")
    return f"{text} ({'; '.join(notes)})" if notes else text


def write_run_report(out_dir: str | Path, command: str | None = None) -> Path:
    """Write ``OUT/report.html`` and ``OUT/figures/*.png`` from a finished run directory's files."""
    out = Path(out_dir)
    results = json.loads((out / "results.json").read_text())
    curves = pd.read_csv(out / "curves.csv") if (out / "curves.csv").is_file() else pd.DataFrame()
    folder = out / FIGURES
    class_names = results.get("class_names", [])
    images = [
        ("Confusion matrix", confusion_figure(results["confusion"], class_names, folder)),
        ("Per source dataset", dataset_figure(results, folder)),
        ("Seeds", seed_figure(results, folder)),
    ]
    curve_img = curves_figure(curves, folder)
    subject_img = subject_figure(results, folder)
    protocol = str(results.get("protocol", "unknown"))
    warning = ""
    if "oracle" in protocol:
        warning = ('<p class="optimistic">OPTIMISTIC protocol (oracle-epoch): for every held-out subject the epoch '
                   "with the best accuracy on that subject's own test samples was kept. These numbers are not "
                   "an honest estimate.</p>")
    elif protocol == "unknown":
        warning = '<p class="optimistic">Protocol unknown: nothing says how these predictions were obtained.</p>'
    config = (out / "config.yaml").read_text() if (out / "config.yaml").is_file() else ""
    facts = {
        "model": results.get("model"), "dataset": results.get("dataset"), "samples": results.get("n"),
        "folds": results.get("n_folds"), "seeds": results.get("seeds"),
        "parameters": own_and_total_of(results, "params", "params_total"),
        "FLOPs per sample": own_and_total_of(results, "flops_per_sample", "flops_total"),
        "wall time (s)": _wall(results),
        "mean fold time (s)": f"{results['fold_seconds']:.1f}" if "fold_seconds" in results else None,
        "parts of the blend, each alone (mean over seeds)": blend_parts(results),
        "in-fold ensemble members, each alone (mean over seeds)": ensemble_members(results),
        "models trained at once (fold batch)": results.get("fold_batch"),
        "worker processes": results.get("jobs"),
    }
    fact_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                        for k, v in facts.items() if v is not None)
    figs = "".join(f'<figure><img alt="{html.escape(t)}" src="{src}"></figure>' for t, src in images)
    title = f"{results.get('model', 'model')} on {results.get('dataset', 'data')}"
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p><span class="label">protocol: {html.escape(protocol)}</span>
<span class="label">evaluation: {html.escape(str(results.get('evaluation', 'CDE')))}</span>
<span class="label">seeds: {html.escape(str(results.get('seeds')))}</span></p>
{warning}
<h2>Results (UF1 and UAR over predictions pooled across folds, MEGC2019)</h2>
{results_table(results)}
<div class="grid">{figs}</div>
<h2>Training curves</h2>
{f'<img alt="Training curves" src="{curve_img}">' if curve_img else NO_CURVES}
<h2>Per held-out subject</h2>
<img alt="Per subject" src="{subject_img}">
<h2>Cost</h2>
<table>{fact_rows}</table>
<h2>Command and configuration</h2>
<pre>{html.escape(command or '(not recorded)')}</pre>
<pre>{html.escape(config)}</pre>
<p style="color:#777;font-size:12px">Written by epir. Figures are also in {FIGURES}/ as PNG files.</p>
</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path


def write_table_report(out_dir: str | Path, title: str, table_markdown: str,
                       figures: Sequence[tuple[str, Path]] = (), runs: Sequence[str] = ()) -> Path:
    """``OUT/report.html`` for a page of several runs (ablate, compare, epir report): the table, the given PNG
    figures embedded, and links to each run's own report.html.
    """
    out = Path(out_dir)
    lines = [ln for ln in table_markdown.strip().splitlines() if ln.startswith("|")]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines if not set(ln) <= set("|-: ")]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0]) if rows else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    imgs = "".join(
        f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"></figure>' for t, p in figures if p.is_file()
    )
    links = "".join(f'<li><a href="{html.escape(r)}/report.html">{html.escape(r)}</a></li>' for r in runs)
    optimistic = any("oracle" in c for r in rows for c in r)
    warn = ('<p class="optimistic">Rows marked oracle-epoch are OPTIMISTIC: the epoch was chosen on each held-out '
            "subject.</p>") if optimistic else ""
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{warn}
<table><tr>{head}</tr>{body}</table><div class="grid">{imgs}</div>
{f'<h2>Runs</h2><ul>{links}</ul>' if links else ''}</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path


__all__ = ["CLASS_COLOURS", "METRIC_COLOURS", "class_colour", "confusion_plot", "write_run_report",
           "write_table_report"]
