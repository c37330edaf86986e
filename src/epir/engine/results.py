"""Pooling fold predictions into results: ``results.json``, ``predictions.csv``, MEGC2019 logs, tables."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from epir.engine.agreement import describe
from epir.engine.metrics import megc_scores
from epir.engine.records import LosoResults, Scores, first_bad_probability_row
from epir.engine.runstore import write_json_atomic
from epir.engine.uncertainty import LEVEL, METHOD, RESAMPLES, bootstrap_ci, describe_ci, format_interval, samples
from epir.errors import ConfigError, DatasetError, DatasetNotFoundError

HONEST = "honest"
ORACLE = "oracle-epoch (optimistic)"
FOLD_WEIGHTS = "fold-weights (given per-fold weights, no training)"
#: The protocol of a log or run that does not say: never assumed honest.
UNKNOWN = "unknown"
#: Source datasets a MEGC2019 log's fold header may name (``<db> <subject>``).
KNOWN_SOURCES = ("casme2", "samm", "smic", "casme3", "synthetic")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """The mean of per-seed scores and their sample standard deviation (0 for one seed): every "± over seeds"."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarize(
    predictions: pd.DataFrame,
    class_names: Sequence[str],
    protocol: str,
    absent: str = "skip",
    *,
    ci_resamples: int = RESAMPLES,
    ci_level: float = LEVEL,
    ci_method: str = METHOD,
) -> dict[str, Any]:
    """Metrics of pooled predictions, per seed and as mean and (sample) standard deviation over seeds.

    Beside each mean, ``uf1_ci`` and ``uar_ci`` give its subject-bootstrap interval (overall and per source; the key
    ``ci`` says how it was computed; see :mod:`epir.engine.uncertainty`). A source of a single subject has none.

    Args:
        predictions: one row per (seed, sample) with columns ``seed, subject, source, true, predicted``.
        class_names: class index -> name.
        protocol: ``honest``, ``oracle-epoch (optimistic)`` or the fold-weights label.
        absent: absent-class policy (see :mod:`epir.engine.metrics`).
        ci_resamples: bootstrap resamples of the intervals.
        ci_level: their confidence level.
        ci_method: how they are read off the resamples (``percentile``, ``bca`` or ``basic``).
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
        out[key], out[f"{key}_std"] = mean_std([s[key] for s in per_seed])
    ci = bootstrap_ci(predictions, k, absent=absent, resamples=ci_resamples, level=ci_level, method=ci_method)
    if ci is not None:
        out["uf1_ci"], out["uar_ci"] = ci.pop("uf1"), ci.pop("uar")
        out["ci"] = ci
    sources = sorted({s for r in per_seed for s in r["per_dataset"]})
    out["per_dataset"] = {}
    for src in sources:
        entry: dict[str, Any] = {}
        for key in ("uf1", "uar"):
            entry[key], entry[f"{key}_std"] = mean_std([r["per_dataset"][src][key] for r in per_seed])
        entry["n"] = per_seed[0]["per_dataset"][src]["n"]
        src_ci = bootstrap_ci(predictions[predictions["source"].astype(str) == src], k, absent=absent,
                              resamples=ci_resamples, level=ci_level, method=ci_method)
        if src_ci is not None:
            entry["uf1_ci"], entry["uar_ci"] = src_ci["uf1"], src_ci["uar"]
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


def write_megc_log(predictions: pd.DataFrame, path: Path, protocol: str,
                   class_names: Sequence[str] | None = None) -> None:
    """MEGC2019 submission format: ``<db> <subject>`` per fold, then ``<clip> <gt> <pred>`` per sample.

    Leading ``#`` comment lines state the protocol and the classes (readers skip ``#`` lines).
    """
    lines = [f"# protocol: {protocol}"]
    if class_names is not None:
        lines.append(f"# classes: {','.join(class_names)}")
    for (src, sid), df in predictions.groupby(["source", "subject_id"], sort=False):
        lines.append(f"{src} {sid}")
        lines += [f"{c} {t} {p}" for c, t, p in zip(df["clip"], df["true"], df["predicted"])]
    path.write_text("\n".join(lines) + "\n")


def read_megc_log_meta(path: str | Path) -> dict[str, Any]:
    """The comment lines of a log before its first fold header: ``protocol`` (``unknown`` when none says) and
    ``classes`` (None when undeclared). A protocol line after the first header is not believed.
    """
    meta: dict[str, Any] = {"protocol": UNKNOWN, "evaluation": None, "classes": None}
    for line in _log_text(Path(path)).splitlines():
        line = line.strip()
        if not line:
            continue
        if not line.startswith("#"):
            break
        key, _, value = line[1:].partition(":")
        key, value = key.strip(), value.strip()
        if key == "protocol":  # "# protocol: honest; evaluation: SDE(casme2)"
            protocol, _, rest = value.partition("; evaluation:")
            meta["protocol"], meta["evaluation"] = protocol.strip() or UNKNOWN, rest.strip() or None
        elif key == "classes":
            meta["classes"] = [c.strip() for c in value.split(",") if c.strip()]
    return meta


def _log_text(path: Path) -> str:
    if not path.is_file():
        raise DatasetNotFoundError(f"MEGC2019 log {path} does not exist.")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a UTF-8 text file (byte {e.start}); a MEGC2019 log is plain text.") from None


def read_megc_log(path: str | Path, num_classes: int | None = None) -> pd.DataFrame:
    """Parse a MEGC2019 submission log into ``source, subject_id, subject, clip, true, predicted, seed``.

    Strict: a fold header is ``<db> <subject>`` with ``db`` one of :data:`KNOWN_SOURCES`; a sample line is
    ``<clip> <gt> <pred>`` with labels in ``0..K-1`` (K: ``num_classes``, else the log's ``# classes:`` line,
    else the composite's 3); a clip may appear once per fold. Anything else is an error naming the line.
    """
    path = Path(path)
    text = _log_text(path)
    meta = read_megc_log_meta(path)
    k = num_classes or (len(meta["classes"]) if meta["classes"] else 3)
    rows, header, seen = [], None, set()
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) == 2 and parts[0] in KNOWN_SOURCES:
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
            if not (0 <= t < k and 0 <= p < k):
                raise DatasetError(
                    f"{path} line {n}: {line!r}; labels must be classes 0..{k - 1} ({k} classes"
                    f"{' declared' if meta['classes'] else ', the composite set'}; declare others with a "
                    f"'# classes: a,b,...' line)."
                )
            key = (header[0], header[1], parts[0])
            if key in seen:
                raise DatasetError(f"{path} line {n}: clip {parts[0]!r} of {header[0]} {header[1]} appears twice.")
            seen.add(key)
            rows.append((header[0], header[1], f"{header[0]}/{header[1]}", parts[0], t, p, 0))
        elif len(parts) == 2:
            raise DatasetError(
                f"{path} line {n}: {line!r}; expected '<clip> <gt> <pred>' (a field is missing) or a fold header "
                f"'<db> <subject>' with db one of {', '.join(KNOWN_SOURCES)}."
            )
        else:
            raise DatasetError(
                f"{path} line {n}: {line!r}; expected '<db> <subject>' or '<clip> <gt> <pred>'."
            )
    if not rows:
        raise DatasetError(f"{path}: no predictions found.")
    return pd.DataFrame(rows, columns=["source", "subject_id", "subject", "clip", "true", "predicted", "seed"])


#: Columns every ``predictions.csv`` row has (beside one ``prob_<class>`` column per class).
PREDICTION_COLUMNS = ("seed", "subject", "source", "true", "predicted")
_REDO_PREDICTIONS = ("The file was edited or is not epir's: rerun the run's `epir loso` command with the same --out "
                     "(its finished folds are kept and predictions.csv is written again from them).")


def read_predictions(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """A run's ``predictions.csv`` and its class names (from the ``prob_<class>`` columns), checked row by row.

    Strict, as :func:`read_megc_log`: ``seed``, ``true`` and ``predicted`` are whole numbers, the labels classes
    ``0..K-1``, every probability a finite number in [0, 1], each row's summing to 1 with the predicted class at
    their maximum; a sample (``seed, subject, clip``) appears once, and every seed covers the same samples with the
    same labels. Anything else is a :class:`~epir.errors.DatasetError` naming the line and the fix: a score is
    never computed from a damaged file.
    """
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: the file is empty; expected a header row and one row per prediction. "
                           f"{_REDO_PREDICTIONS}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot parse as CSV ({type(e).__name__}: {e}). {_REDO_PREDICTIONS}") from None
    missing = [c for c in PREDICTION_COLUMNS if c not in raw.columns]
    if missing:
        raise DatasetError(f"{path}: missing columns {missing}; expected {list(PREDICTION_COLUMNS)} and one "
                           f"prob_<class> column per class. {_REDO_PREDICTIONS}")
    prob_cols = [c for c in raw.columns if c.startswith("prob_")]
    if not prob_cols:
        raise DatasetError(f"{path}: no prob_<class> columns; expected one per class (the class names come from "
                           f"them). {_REDO_PREDICTIONS}")
    raw = raw[raw.apply(lambda r: any(str(v).strip() for v in r), axis=1)]  # blank lines carry no row
    if raw.empty:
        raise DatasetError(f"{path}: no rows; expected one row per prediction. {_REDO_PREDICTIONS}")
    lines = raw.index.to_numpy() + 2  # 1-based, after the header (blank lines kept in the count)
    k = len(prob_cols)

    def stop(mask: np.ndarray, column: str, expected: str) -> None:
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            raise DatasetError(f"{path} line {lines[i]}: {column} is {raw[column].iloc[i]!r}; expected {expected}. "
                               f"{_REDO_PREDICTIONS}")

    out = raw.copy()
    for column, lo, hi in (("seed", None, None), ("true", 0, k - 1), ("predicted", 0, k - 1)):
        values = pd.to_numeric(raw[column].str.strip(), errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values) | (values != np.round(values))
        if lo is not None:
            bad |= (values < lo) | (values > hi)
        stop(bad, column, "a whole number" if lo is None else f"a class 0..{hi} (one per prob_ column)")
        out[column] = values.astype(np.int64)
    probs = np.stack([pd.to_numeric(raw[c].str.strip(), errors="coerce").to_numpy(dtype=float) for c in prob_cols], 1)
    out[prob_cols] = probs
    found = first_bad_probability_row(probs, out["predicted"].to_numpy())
    if found is not None:
        row, kind = found
        one = np.arange(len(probs)) == row
        if kind == "range":  # name the value that is not a probability
            j = int(np.flatnonzero(~np.isfinite(probs[row]) | (probs[row] < 0) | (probs[row] > 1))[0])
            stop(one, prob_cols[j], "a probability in [0, 1]")
        elif kind == "sum":
            stop(one, prob_cols[0], f"the {k} probabilities of a row to sum to 1")
        stop(one, "predicted", "the class of the row's largest probability")
    if "clip" in raw.columns:
        stop(out.duplicated(["seed", "subject", "clip"]).to_numpy(), "clip",
             "each sample once per seed (this row repeats an earlier one)")
        try:  # every seed over the same samples with the same labels: the check every table gets
            samples(out, str(path))
        except ConfigError as e:
            raise DatasetError(f"{e} {_REDO_PREDICTIONS}") from None
    return out.reset_index(drop=True), [c.removeprefix("prob_") for c in prob_cols]


def write_results(out_dir: Path, results: dict[str, Any], predictions: pd.DataFrame) -> None:
    """Write ``results.json`` (whole or not at all), ``predictions.csv`` and ``megc_log.txt`` (plus one log per
    seed if several).
    """
    write_json_atomic(out_dir / "results.json", results, indent=2)
    classes = [c.removeprefix("prob_") for c in predictions.columns if c.startswith("prob_")] or None
    predictions = predictions.assign(protocol=results["protocol"])  # every row says how it was obtained
    predictions.to_csv(out_dir / "predictions.csv", index=False)
    seeds = sorted(predictions["seed"].unique())
    label = results["protocol"] + (f"; evaluation: {results['evaluation']}" if results.get("evaluation") else "")
    write_megc_log(predictions[predictions["seed"] == seeds[0]], out_dir / "megc_log.txt", label, classes)
    if len(seeds) > 1:
        for s in seeds:
            write_megc_log(predictions[predictions["seed"] == s], out_dir / f"megc_log_seed{s}.txt", label, classes)


def _part_score(part: dict[str, Any], key: str, several: bool) -> str:
    """One part's score as the summary lines give it: ``UF1 0.6681``, with ``± 0.0151``, its spread over seeds, where
    the run has ``several`` seeds and recorded it.
    """
    spread = f" ± {part[f'{key}_std']:.4f}" if several and f"{key}_std" in part else ""
    return f"{key.upper()} {part[key]:.4f}{spread}"


def blend_parts(results: dict[str, Any]) -> str | None:
    """Where a teacher's predictions were blended into the run's, what each part scores alone on the same held-out
    subjects: ``model alone UF1 0.6681 UAR 0.7112; teacher (ststnet x3) alone UF1 0.6864 UAR 0.6673; blended with
    weight 0.25 in 90 of 204 folds, 0.5 in 91, 0.75 in 23``, each score with its spread over seeds where the run has
    several (``UF1 0.6681 ± 0.0151``). None for a run without a blend (or one written before round 17).
    """
    alone, teacher = results.get("model_alone"), results.get("teacher")
    if not isinstance(alone, dict) or not isinstance(teacher, dict) or "uf1" not in teacher:
        return None
    members = int(teacher.get("members") or 1)
    name = f"{teacher.get('model')}" + (f" x{members}" if members > 1 else "")
    counts = {m: c for m, c in (teacher.get("mix_counts") or {}).items() if c}
    total = sum(counts.values())
    weight = (", ".join(f"{m} in {c} of {total} folds" if i == 0 else f"{m} in {c}"
                        for i, (m, c) in enumerate(counts.items())) if counts else f"{teacher.get('mix')}")
    several = len(results.get("seeds") or ()) > 1

    def score(part: dict[str, Any], key: str) -> str:
        return _part_score(part, key, several)

    try:  # parts_agreement (round 19): left out when absent, or not the record agreement() writes
        where = f"; where they err: {describe(results['parts_agreement'])}"
    except (AttributeError, KeyError, TypeError, ValueError):
        where = ""
    return (f"model alone {score(alone, 'uf1')} {score(alone, 'uar')}; teacher ({name}) alone {score(teacher, 'uf1')} "
            f"{score(teacher, 'uar')}; blended with weight {weight}{where}")


def ensemble_members(results: dict[str, Any]) -> str | None:
    """Where the folds were in-fold ensembles (``train.ensemble`` > 1, fold files from round 31 on), what each
    member scores alone on the same held-out subjects, mean over seeds, and where each errs against member 0:
    ``member 0 UF1 0.6248 UAR 0.6628; member 1 (train.input_norm=recentre) UF1 0.6655 UAR 0.7036, where it errs
    against member 0: both wrong ...`` (round 31's default at 20 epochs with lever ``input-ensemble``; each score
    with its spread over seeds where the run has several). Where the members' networks differ in size (model
    arguments of their own), each says its parameters: ``member 1 (model.shifts=none;...) 88,077 params UF1 ...``.
    None for a run without members' records.
    """
    members = results.get("members")
    if not isinstance(members, list) or not members:
        return None
    several = len(results.get("seeds") or ()) > 1
    sizes = len({m.get("params") for m in members if isinstance(m, dict)}) > 1
    texts = []
    try:
        for m in members:
            scores = " ".join(_part_score(m, key, several) for key in ("uf1", "uar"))
            own = f" ({m['overrides']})" if m.get("overrides") else ""
            if sizes and isinstance(m.get("params"), int):
                own += f" {m['params']:,} params"
            where = f", where it errs against member 0: {describe(m['versus_member_0'])}" if "versus_member_0" in m \
                else ""
            texts.append(f"member {m['member']}{own} {scores}{where}")
    except (KeyError, TypeError, ValueError):  # not the record run_facts writes
        return None
    return "; ".join(texts)


def format_summary(results: dict[str, Any], title: str = "") -> str:
    """A readable table: overall and per-dataset UF1/UAR (mean ± std over seeds)."""
    record = LosoResults.from_json(results)

    def cell(scores: Scores, key: str) -> str:
        mean, std = getattr(scores, key), getattr(scores, f"{key}_std")
        return f"{mean:.4f} ± {std:.4f}" if len(record.seeds) > 1 else f"{mean:.4f}"

    shown = record.overall.uf1_ci is not None
    meta: dict[str, Any] = results["ci"] if isinstance(results.get("ci"), dict) else {}
    head = f"{'dataset':<12} {'n':>5}  {'UF1':>17}  {'UAR':>17}"
    if shown:
        pct = f"{meta.get('level', 0.95):.0%} CI"
        head += f"  {'UF1 ' + pct:>16}  {'UAR ' + pct:>16}"
    lines = []
    if title:
        lines.append(title)
    evaluation = f"   evaluation: {results['evaluation']}" if results.get("evaluation") else ""
    lines.append(f"protocol: {record.protocol}{evaluation}   seeds: {results.get('seeds')}")
    lines += [head, "-" * len(head)]
    for name, s in record.rows():
        row = f"{name:<12} {s.n:>5}  {cell(s, 'uf1'):>17}  {cell(s, 'uar'):>17}"
        if shown:
            row += f"  {format_interval(s.uf1_ci):>16}  {format_interval(s.uar_ci):>16}"
        lines.append(row)
    if results.get("input_transform"):
        t = results["input_transform"]
        lines.append(f"input transform: {t.get('input_transform')} (landmarks: {t.get('landmarks', 'n/a')})")
    share = results.get("subject_fraction")
    if isinstance(share, dict):
        lines.append(f"training subjects: a share of {share.get('fraction')} of each fold's, "
                     f"{share.get('train_subjects_mean', 0):.1f} of {share.get('of')} on average, drawn per fold "
                     "(train.subject_fraction: a learning-curve point, not the whole protocol)")
    if "accuracy" in results:
        lines.append(f"accuracy {results['accuracy']:.4f}")
    parts = blend_parts(results)
    if parts:
        lines.append(f"parts (mean over seeds): {parts}")
    alone = ensemble_members(results)
    if alone:
        lines.append(f"ensemble members alone (mean over seeds): {alone}")
    if shown:
        seeds = "; ± is the spread over seeds" if len(record.seeds) > 1 else ""
        lines.append(f"CI: {describe_ci(meta)}, how far the score moves with the subjects drawn{seeds}")
    if results["protocol"] == ORACLE:
        lines.append("NOTE: oracle-epoch (optimistic): the epoch was chosen on each held-out subject's test data.")
    return "\n".join(lines)
