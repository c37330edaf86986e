"""``epir compare``: several models, the same folds and seeds, one table and two kinds of figure."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from epir.config import RunConfig, repeated
from epir.data import FlowDataset, load_dataset
from epir.engine.ablate import LEVERS, lever_on
from epir.engine.agreement import agreement_markdown
from epir.engine.evaluate import agreements, differences, read_run_dir
from epir.engine.loso import make_config, run_loso
from epir.engine.report_html import METRIC_COLOURS, confusion_plot, write_table_report
from epir.engine.runstore import write_json_atomic
from epir.engine.tables import add_latencies, differences_markdown, run_row, to_markdown
from epir.errors import ConfigError, did_you_mean
from epir.fileio import writable_dir
from epir.models import MODELS, default_recipe

#: Separates a model from one of its named recipes in a compared arm: ``epir@alone`` (``epir list recipes``).
ARM_SEP = "@"
#: Adds a recipe lever of ``epir ablate`` (:data:`epir.engine.ablate.LEVERS`) to a compared arm: ``epir+smooth``,
#: ``epir@alone+tta+mixup``.
LEVER_SEP = "+"


def parse_arm(arm: str) -> tuple[str, str | None]:
    """A compared arm, ``MODEL``, ``MODEL@RECIPE``, either with ``+LEVER`` after it (:func:`arm_levers`), as
    (model, recipe or None); the names are checked.
    """
    base, *levers = arm.split(LEVER_SEP)
    model, sep, recipe = base.partition(ARM_SEP)
    if (sep and not (model and recipe)) or not all(levers):
        raise ConfigError(f"models (--models) {arm!r}: expected MODEL or MODEL{ARM_SEP}RECIPE, either followed by "
                          f"{LEVER_SEP}LEVER, e.g. epir{ARM_SEP}alone or epir{LEVER_SEP}smooth (epir list recipes "
                          "--model MODEL; levers: epir ablate --help).")
    MODELS.get(model)  # an unknown model fails before any training
    if sep:
        try:
            default_recipe(model, recipe)
        except ConfigError as e:
            raise ConfigError(f"models (--models) {arm!r}: {e} (epir list recipes --model {model})") from None
    arm_levers(arm)
    return model, recipe or None


def arm_levers(arm: str) -> list[str]:
    """The recipe levers a compared arm adds, in order: ``epir@alone+tta+mixup`` -> ``["tta", "mixup"]``."""
    levers = arm.split(LEVER_SEP)[1:]
    for lever in levers:
        if lever not in LEVERS:
            raise ConfigError(f"models (--models) {arm!r}: no lever {lever!r}{did_you_mean(lever, LEVERS)}; "
                              f"levers: {', '.join(LEVERS)}.")
    return levers


def with_levers(arm: str, cfg: RunConfig) -> RunConfig:
    """``cfg`` with the arm's levers on (:func:`arm_levers`); a lever that changes nothing is an error."""
    for lever in arm_levers(arm):
        on = lever_on(cfg, lever)
        if on is None:
            raise ConfigError(f"models (--models) {arm!r}: lever {lever!r} is already on in "
                              f"{arm.split(LEVER_SEP)[0]!r}; name the arm without it.")
        cfg = on
    return cfg


def _heads(arm: str) -> tuple[str, str, str]:
    """What ``--set HEAD:KEY=VALUE`` may name to reach ``arm``: the arm, its recipe's arm without levers, its model
    (``epir@alone+smooth``: itself, ``epir@alone``, ``epir``).
    """
    base = arm.partition(LEVER_SEP)[0]
    return arm, base, base.partition(ARM_SEP)[0]


def _arm_label(arm: str, recipes: dict[str, str], settings: Sequence[str]) -> str:
    """How ``comparison.md``'s header names an arm's recipe: ``ststnet default``, ``epir@alone``, with the settings
    given on top of it (``ststnet default with train.epochs=20, train.lr=2e-3``).
    """
    label = arm if ARM_SEP in arm or LEVER_SEP in arm else f"{arm} {recipes.get(arm, 'default')}"
    return f"{label} with {', '.join(settings)}" if settings else label


def recipes_header(models: Sequence[str], recipes: dict[str, str], per_model: dict[str, list[str]]) -> str:
    """``comparison.md``'s list of the arms' recipes: each arm with the settings given on top of its recipe (the
    last value of each key; ``eval.*`` left out: they change how a run executes, not what it learns), and the
    settings every arm shares said once at the end (``recipes: epir default, epir@alone with train.lr=0.002; every
    arm with train.epochs=20``).
    """
    def effective(overrides: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for o in overrides:
            key, _, value = o.partition("=")
            if not key.startswith("eval."):
                out.pop(key, None)  # keeps the order of the last setting
                out[key] = value
        return out

    shown = {m: effective(per_model.get(m, [])) for m in models}
    common = {k: v for k, v in shown[models[0]].items()
              if len(models) > 1 and all(shown[m].get(k) == v for m in models)}
    arms = ", ".join(_arm_label(m, recipes, [f"{k}={v}" for k, v in shown[m].items() if k not in common])
                     for m in models)
    return f"recipes: {arms}" + (f"; every arm with {', '.join(f'{k}={v}' for k, v in common.items())}"
                                 if common else "")


def split_overrides(models: Sequence[str], overrides: Sequence[str]) -> dict[str, list[str]]:
    """``KEY=VALUE`` applies to every arm, ``ARM:KEY=VALUE`` to that arm only, ``MODEL@RECIPE:KEY=VALUE`` to that
    recipe's arms with or without levers, and ``MODEL:KEY=VALUE`` to every arm of that model (``epir:...`` to
    ``epir``, ``epir+smooth`` and ``epir@alone`` alike).
    """
    per_model: dict[str, list[str]] = {m: [] for m in models}
    for item in overrides:
        head, sep, rest = item.partition(":")
        if sep and "=" not in head:
            targets = [m for m in models if head in _heads(m)]
            if not targets:
                raise ConfigError(f"overrides (--set) {item!r}: {head!r} is not one of the compared models "
                                  f"{list(models)}.")
            for m in targets:
                per_model[m].append(rest)
        else:
            for m in models:
                per_model[m].append(item)
    return per_model


def plot_scores(table: pd.DataFrame, path: Path, title: str) -> None:
    """Grouped bars of UF1 and UAR per model, with error bars of one std over seeds."""
    import matplotlib  # noqa: PLC0415 (matplotlib loaded only when drawing, after the Agg backend is chosen)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (matplotlib loaded only when drawing, after the Agg backend is chosen)

    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(1.8 * len(table) + 2, 4))
    for i, metric in enumerate(("uf1", "uar")):
        ax.bar(x + (i - 0.5) * 0.38, table[metric], 0.38, yerr=table[f"{metric}_std"], capsize=4,
               label=metric.upper(), color=METRIC_COLOURS[metric])
    ax.set_xticks(x, table["name"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (mean ± std over seeds)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix with counts (summed over seeds), drawn as in every run report."""
    fig = confusion_plot(confusion, class_names, title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (matplotlib loaded only when drawing, after the Agg backend is chosen)

    plt.close(fig)


def run_compare(
    models: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    dataset: str = "synthetic",
    root: str | None = None,
    seeds: Sequence[int] = (0,),
    folds: Sequence[str] = (),
    protocol: str = "honest",
    overrides: Sequence[str] = (),
    recipes: dict[str, str] | None = None,
    data: FlowDataset | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """LOSO of every arm in ``models`` on the same folds and seeds: a registered model with its default recipe (or
    the named one in ``recipes``, e.g. ``{"htnet": "cpu"}``), or ``MODEL@RECIPE`` for one of its named recipes, so
    that several recipes of one model can be compared (``["epir", "epir@teacher3-mix-shared", "ststnet"]``); either
    may add levers of ``epir ablate`` (``epir+smooth``, ``epir@alone+tta``: :data:`LEVER_SEP`).

    Writes ``comparison.md``, ``comparison.csv``, ``scores.png`` and ``confusion_<arm>.png`` into
    ``out_dir``, and ``differences.json``: every other arm minus the first on the same samples, with the interval
    of a paired subject bootstrap (:func:`epir.engine.uncertainty.paired_difference`), and ``agreement.json``: where
    every other arm errs against the first, and the first's seeds among themselves
    (:func:`epir.engine.evaluate.agreements`; also a table in ``comparison.md``); each arm's run directory
    (predictions, MEGC log) is ``out_dir/<arm>``.
    """
    if protocol not in ("honest", "oracle-epoch"):
        raise ConfigError(f"protocol={protocol!r} (--protocol); expected honest or oracle-epoch.")
    recipes = dict(recipes or {})
    if not models:
        raise ConfigError("models (--models): name at least one registered model (epir list models).")
    twice = repeated(models)
    if twice:
        raise ConfigError(f"models (--models) {list(models)} names {twice[0]!r} more than once; name each arm once "
                          f"(another recipe of a model is MODEL{ARM_SEP}RECIPE, its components epir ablate).")
    arms = {m: parse_arm(m) for m in models}  # unknown names fail before any training
    for m in recipes:
        MODELS.get(m)
        if m not in models:
            raise ConfigError(f"recipes (--recipe) {m}:{recipes[m]}: {m!r} is not one of the compared models "
                              f"{list(models)}.")
    for m, (_, recipe) in arms.items():
        if recipe is not None:
            recipes[m] = recipe
    out = writable_dir(out_dir, "comparison folder")
    per_model = split_overrides(models, overrides)
    configs = {
        m: with_levers(m, make_config(model, dataset, root=root, seeds=seeds, folds=folds,
                                      oracle_epoch=protocol == "oracle-epoch", overrides=per_model[m],
                                      recipe=recipes.get(m)))
        for m, (model, _) in arms.items()
    }
    if data is None:
        first = configs[models[0]]
        data = load_dataset(first.data.dataset, root=first.data.root, seed=first.data.seed)
    rows, results_by_model = [], {}
    for m in models:
        if progress:
            print(f"[compare] {m}")
        results = run_loso(configs[m], dataset=data, out_dir=out / m, progress=progress)
        results_by_model[m] = results
        rows.append(run_row(m, results, configs[m]))
    add_latencies(rows, [configs[m] for m in models])  # after every arm trained, all under the same load
    table = pd.DataFrame(rows)
    table.to_csv(out / "comparison.csv", index=False)
    label = f"{rows[0]['protocol']}, {rows[0]['evaluation']}"
    scored = {m: read_run_dir(out / m) for m in models}  # read once for both
    diffs = differences(scored, models[0])
    write_json_atomic(out / "differences.json", diffs)
    agreed = agreements(scored, models[0])
    write_json_atomic(out / "agreement.json", agreed)
    where = agreement_markdown(agreed)
    (out / "comparison.md").write_text(
        f"# Comparison on {data.name} ({label}, seeds {list(seeds)}, "
        f"{rows[0]['n_folds']} folds; {recipes_header(models, recipes, per_model)})\n\n"
        + to_markdown(table, "model") + ("\n" + differences_markdown(diffs) if diffs else "")
        + ("\n" + where if where else "")
    )
    plot_scores(table, out / "scores.png", f"{data.name}: {label}")
    for m, r in results_by_model.items():
        plot_confusion(r["confusion"], r["class_names"], out / f"confusion_{m}.png", f"{m} ({label})")
    write_table_report(
        out, f"Comparison on {data.name} ({label})", to_markdown(table, "model"),
        [("scores", out / "scores.png"), *((f"confusion {m}", out / f"confusion_{m}.png") for m in models)],
        runs=list(models),
    )
    return table


__all__ = ["ARM_SEP", "LEVER_SEP", "arm_levers", "parse_arm", "recipes_header", "run_compare", "split_overrides",
           "with_levers"]
