"""The datasets' own label sheets, read into one canonical annotation table, with label schemes.

Illustration (needs the data it names; not run as a doctest)::

    from epir.datasets import read_annotations
    df = read_annotations("casme2", "CASME2-coding-20140508.xlsx", labels="composite")  # 145 clips

The canonical table has one row per micro-expression and the columns

``dataset, subject, clip, onset, apex, offset, emotion, label``  then ``action_units`` when the sheet has
them, ``video`` for CAS(ME)^3 (the task video holding the clip), ``issue`` and ``fix``.

Subjects and clips are named as in the official MEGC2019 list where the dataset is part of it (``sub01``
/ ``EP02_01f``, ``006`` / ``006_1_2``, ``s01`` / ``s01_ne_01``); CAS(ME)^3 keeps ``spNO.1`` and names a
clip ``<video>_<onset>``. Frames are nullable integers (``Int64``), as numbered in the dataset; emotions
are lower-case canonical names (``happiness``, ``others``, ...; each reader's ``EMOTIONS``). ``label``
is the class index under the chosen scheme (``LABEL_SCHEMES``); rows whose emotion the scheme leaves out
are dropped. Each dataset's reader (``casme2``, ``samm``, ``smic``, ``casme3``) documents its sheet's
quirks.

Annotation fixes are data: each dataset module's ``FIXES`` (a CSV table) lists, per dataset, subject and clip,
a value to correct (``set``) or a clip to leave out (``drop``), the value it replaces and the reason. A
corrected row says so in ``fix``; every fix applied is listed in ``df.attrs["fixes"]``. Frame values that
are still missing or impossible after the fixes (apex ``/``, apex before onset or after offset, apex equal
to onset, offset before onset) are never silently repaired or dropped: the row is kept, ``issue``
describes the problem, and an ``AnnotationWarning`` names the rows.
"""
from __future__ import annotations

import fnmatch
import functools
import io
import os
import re
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, TypeAlias

import pandas as pd

from epir.datasets.base import READERS
from epir.datasets.schemes import UnknownChoiceError, get_scheme
from epir.errors import AnnotationWarning, ConfigError, DatasetError, DatasetNotFoundError, did_you_mean

#: Columns every canonical table starts with.
COLUMNS = ("dataset", "subject", "clip", "onset", "apex", "offset", "emotion", "label")
FRAMES = ("onset", "apex", "offset")
#: Fields a fix may set (values as the reader writes them: frames as text, canonical emotion names).
FIXABLE = ("onset", "apex", "offset", "emotion", "action_units")
FIX_COLUMNS = ("dataset", "sheet", "subject", "clip", "action", "field", "old", "new", "reason")
HEADER_SEARCH_ROWS = 50

FixesArg: TypeAlias = "bool | str | os.PathLike | pd.DataFrame | None"


def read_annotations(dataset: str, sheet: str | os.PathLike, labels: str | None = "native", *,
                     fixes: FixesArg = True) -> pd.DataFrame:
    """Read a dataset's own label sheet into the canonical annotation table.

    Args:
        dataset: ``casme2``, ``samm``, ``smic`` or ``casme3``.
        sheet: the label sheet (.xlsx as distributed, or a .csv export of its table).
        labels: a scheme from ``list_schemes(dataset)``, ``native`` (the dataset's own default, ``NATIVE``),
            or None for every row with ``label`` left empty.
        fixes: True for the packaged fixes (each dataset's ``FIXES``), False/None for none, or your own fixes
            table (a CSV
            path or DataFrame with the columns ``FIX_COLUMNS``).

    Returns:
        The table (see the module docstring); ``attrs`` holds ``dataset``, ``sheet``, ``scheme``,
        ``classes`` (the class name of each label) and ``fixes`` (the fixes applied, as dicts).

    Raises:
        DatasetNotFoundError: the sheet (or a fixes file) does not exist.
        DatasetError: the sheet cannot be read, has no table with the expected columns, or a row is invalid
            (unknown emotion, duplicate clip, unreadable subject or clip name).
        UnknownChoiceError: unknown dataset or scheme (a ConfigError and an UnknownNameError).
        ConfigError: the scheme does not cover the dataset, or the fixes table is malformed.
    """
    reader = _reader(dataset)
    scheme = None if labels is None else get_scheme(labels, reader.DATASET)
    path = Path(sheet).expanduser()
    if not path.is_file():
        raise DatasetNotFoundError(
            f"{path} does not exist. Pass the {reader.TITLE} label sheet as distributed with the dataset "
            f"(the reader understands: {'; '.join(_layout_text(lay) for lay in reader.LAYOUTS)})."
        )
    table, layout, source = _read_layout(path, reader)
    table = reader.normalise(table, layout, source)
    _check_keys(table, source)
    table, applied = _apply_fixes(table, reader.DATASET, path, load_fixes(fixes))
    _check_emotions(table, reader, source)

    frames, issues = _parse_frames(table, has_apex="apex" in table.columns)
    if hasattr(reader, "check"):
        for i, extra in enumerate(reader.check(table)):
            if extra:
                issues[i].append(extra)

    out = pd.DataFrame({
        "dataset": reader.DATASET,
        "subject": table["subject"].to_numpy(object),
        "clip": table["clip"].to_numpy(object),
        **{f: frames[f] for f in FRAMES},
        "emotion": table["emotion"].to_numpy(object),
    })
    if scheme is None:
        out["label"] = pd.array([pd.NA] * len(out), dtype="Int64")
        keep = [True] * len(out)
    else:
        codes = [scheme.label(reader.DATASET, e) for e in out["emotion"]]
        keep = [c is not None for c in codes]
        out["label"] = [-1 if c is None else c for c in codes]
        out["label"] = out["label"].astype("int64")
    for extra in ("action_units", "video"):
        if extra in table.columns:
            out[extra] = table[extra].to_numpy(object)
    out["issue"] = ["; ".join(i) for i in issues]
    out["fix"] = table["fix"].to_numpy(object)
    out = out[keep].reset_index(drop=True)
    out.attrs.update(dataset=reader.DATASET, sheet=str(path), scheme=None if scheme is None else scheme.name,
                     classes=() if scheme is None else scheme.classes, fixes=applied)
    _warn_issues(out, source)
    return out


def load_fixes(fixes: FixesArg = True) -> pd.DataFrame:
    """The fixes table (text columns ``FIX_COLUMNS``, one row per fix), validated.

    Args:
        fixes: True for the packaged fixes (each dataset's ``FIXES``), False/None for an empty table, a CSV path,
            or a DataFrame.
    """
    if fixes is None or fixes is False:
        return pd.DataFrame(columns=list(FIX_COLUMNS), dtype=object)
    if fixes is True:
        where = "the packaged fixes (FIXES of " + ", ".join(f"epir.datasets.{n}" for n in READERS) + ")"
        parts = [pd.read_csv(io.StringIO(m.FIXES), dtype=str, keep_default_na=False)
                 for m in READERS.values() if getattr(m, "FIXES", "")]
        table = (pd.concat(parts, ignore_index=True) if parts
                 else pd.DataFrame(columns=list(FIX_COLUMNS), dtype=object))
    elif isinstance(fixes, pd.DataFrame):
        where = "the fixes table"
        table = fixes.astype(object).fillna("").astype(str)
    else:
        path = Path(fixes).expanduser()
        where = str(path)
        if not path.is_file():
            raise DatasetNotFoundError(f"Fixes table {path} does not exist (a CSV with the columns "
                                       f"{', '.join(FIX_COLUMNS)}).")
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in FIX_COLUMNS if c not in table.columns]
    if missing:
        raise ConfigError(f"{where}: missing column(s) {', '.join(missing)}; a fixes table has the columns "
                          f"{', '.join(FIX_COLUMNS)} (header row first).")
    table = table[list(FIX_COLUMNS)].apply(lambda col: col.map(lambda v: str(v).strip()))
    for n, fx in enumerate(table.itertuples(index=False), start=2):
        at = f"{where}, line {n}"
        if fx.dataset not in READERS:
            raise ConfigError(f"{at}: dataset {fx.dataset!r} is not one of {', '.join(READERS)}."
                              f"{did_you_mean(fx.dataset, READERS)}")
        if fx.action not in ("set", "drop"):
            raise ConfigError(f"{at}: action {fx.action!r} must be 'set' or 'drop'.")
        if not fx.subject or not fx.clip:
            raise ConfigError(f"{at}: subject and clip are required (as in the canonical table, e.g. sub01, EP02_01f).")
        if fx.field and fx.field not in FIXABLE:
            raise ConfigError(f"{at}: field {fx.field!r} cannot be fixed; fixable fields: {', '.join(FIXABLE)}."
                              f"{did_you_mean(fx.field, FIXABLE)}")
        if fx.action == "set" and not fx.field:
            raise ConfigError(f"{at}: a 'set' fix needs a field (one of {', '.join(FIXABLE)}) and its new value.")
        if fx.action == "drop" and fx.new:
            raise ConfigError(f"{at}: a 'drop' fix takes no new value (got {fx.new!r}).")
        if not fx.reason:
            raise ConfigError(f"{at}: every fix needs a reason.")
    return table.reset_index(drop=True)


# ----------------------------------------------------------------------------------------- reading sheets


def _reader(dataset: str) -> ModuleType:
    if dataset not in READERS:
        raise UnknownChoiceError(f"Unknown annotation dataset {dataset!r}.{did_you_mean(dataset, READERS)} "
                                 f"Known datasets: {', '.join(READERS)}.")
    return READERS[dataset]


def _layout_text(layout: dict) -> str:
    where = f" in worksheet {layout['worksheet']!r}" if layout.get("worksheet") else ""
    return f"{layout['name']}: columns {', '.join(layout['required'])}{where}"


def _norm(name: str) -> str:
    return re.sub(r"\s+", " ", name).strip().lower()


def _cell(value: Any) -> str:
    """A sheet cell as stripped text: integral floats without '.0', empty cells as ''."""
    if value is None or (not isinstance(value, str) and pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


@functools.lru_cache(maxsize=16)
def _read_workbook_cached(path: str, mtime_ns: int, size: int) -> dict[str, pd.DataFrame]:
    p = Path(path)
    try:
        if p.suffix.lower() == ".csv":
            sheets = {p.stem: pd.read_csv(p, header=None, dtype=object, keep_default_na=False,
                                          encoding="utf-8-sig")}
        else:
            sheets = pd.read_excel(p, sheet_name=None, header=None, dtype=object)
    except Exception as e:  # openpyxl/zipfile/csv raise many types; re-raised with the file named
        raise DatasetError(f"{p} cannot be read as a label sheet ({type(e).__name__}: {e}). Expected an .xlsx "
                           "workbook as distributed with the dataset, or a .csv export of its table.") from e
    return {name: frame.apply(lambda col: col.map(_cell)) for name, frame in sheets.items()}


def _read_workbook(path: Path) -> dict[str, pd.DataFrame]:
    st = path.stat()
    return _read_workbook_cached(str(path.resolve()), st.st_mtime_ns, st.st_size)


def _find_header(frame: pd.DataFrame, layout: dict) -> tuple[int, dict[str, int]] | None:
    wanted = {**layout["required"], **layout.get("optional", {})}
    for i in range(min(len(frame), HEADER_SEARCH_ROWS)):
        cells: dict[str, int] = {}
        for j, value in enumerate(frame.iloc[i]):
            cells.setdefault(_norm(value), j)
        if all(_norm(c) in cells for c in layout["required"]):
            return i, {canon: cells[_norm(c)] for c, canon in wanted.items() if _norm(c) in cells}
    return None


def _read_layout(path: Path, reader: ModuleType) -> tuple[pd.DataFrame, dict, str]:
    """The sheet's table under canonical column names, text cells, and ``_row`` (the sheet's row number)."""
    sheets = _read_workbook(path)
    for layout in reader.LAYOUTS:
        wanted = layout.get("worksheet")
        names = [wanted] if wanted in sheets else list(sheets)
        for ws in names:
            found = _find_header(sheets[ws], layout)
            if found is None:
                continue
            header, columns = found
            data = sheets[ws].iloc[header + 1:]
            table = pd.DataFrame({canon: data.iloc[:, j].to_numpy(object, copy=True) for canon, j in columns.items()})
            table["_row"] = data.index.to_numpy() + 1  # header=None: index 0 is the sheet's row 1
            table = table[(table.drop(columns="_row") != "").any(axis=1)].reset_index(drop=True)
            source = f"{path}, worksheet {ws!r}" if path.suffix.lower() != ".csv" else str(path)
            return table, layout, source
    first = next((f for f in sheets.values() if len(f)), None)
    got = ""
    if first is not None:
        row = next((i for i in range(len(first)) if (first.iloc[i] != "").any()), 0)
        got = f" Row {row + 1} of the first non-empty worksheet has: {[c for c in first.iloc[row] if c][:12]}."
    raise DatasetError(
        f"{path}: not a {reader.TITLE} label sheet: no worksheet has a header row (within the first "
        f"{HEADER_SEARCH_ROWS} rows) with the expected columns. Expected "
        f"{' or '.join(_layout_text(lay) for lay in reader.LAYOUTS)}.{got}"
    )


def _check_keys(table: pd.DataFrame, source: str) -> None:
    for row, subject, clip in zip(table["_row"], table["subject"], table["clip"]):
        if not subject or not clip:
            raise DatasetError(f"{source}, row {row}: subject and clip are required, got {subject!r} and {clip!r}.")
    dup = table[table.duplicated(["subject", "clip"], keep=False)]
    if len(dup):
        rows = ", ".join(str(r) for r in dup["_row"])
        raise DatasetError(f"{source}, rows {rows}: clip {dup['subject'].iloc[0]}/{dup['clip'].iloc[0]} appears "
                           "more than once; each clip must have one row.")


def _check_emotions(table: pd.DataFrame, reader: ModuleType, source: str) -> None:
    bad = table[~table["emotion"].isin(reader.EMOTIONS)]
    if len(bad):
        row, value = bad["_row"].iloc[0], bad["emotion"].iloc[0]
        raise DatasetError(f"{source}, row {row}: emotion {value!r} is not a {reader.TITLE} emotion; expected one of "
                           f"{', '.join(reader.EMOTIONS)}.{did_you_mean(value, reader.EMOTIONS)} "
                           "(A slip in the sheet can be corrected with a 'set' fix.)")


# ------------------------------------------------------------------------------------------- fixes, frames


def _apply_fixes(table: pd.DataFrame, dataset: str, path: Path,
                 fixes: pd.DataFrame) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    table = table.copy()
    table["fix"] = ""
    applied: list[dict[str, str]] = []
    for n, fx in enumerate(fixes.itertuples(index=False), start=2):
        if fx.dataset != dataset or (fx.sheet and not fnmatch.fnmatch(path.name.lower(), fx.sheet.lower())):
            continue
        mask = (table["subject"] == fx.subject) & (table["clip"] == fx.clip)
        if not mask.any():  # the sheet does not hold this clip (another version, or a subset)
            continue
        if fx.field:
            if fx.field not in table.columns:
                warnings.warn(f"fix {n} ({fx.subject}/{fx.clip}) not applied: {path.name} has no {fx.field} column.",
                              AnnotationWarning, stacklevel=3)
                continue
            current = table.loc[mask, fx.field].iloc[0]
            if current != fx.old:
                warnings.warn(
                    f"fix {n} ({fx.subject}/{fx.clip}) not applied: {fx.field} is {current!r} in {path.name}, the fix "
                    f"expects {fx.old!r}. The sheet may already be corrected; check it and update the fixes table.",
                    AnnotationWarning, stacklevel=3)
                continue
        if fx.action == "drop":
            table = table[~mask]
        else:
            table.loc[mask, fx.field] = fx.new
            note = f"{fx.field} {fx.old or '(empty)'} -> {fx.new}: {fx.reason}"
            table.loc[mask, "fix"] = [f"{f} | {note}" if f else note for f in table.loc[mask, "fix"]]
        applied.append({k: getattr(fx, k) for k in FIX_COLUMNS})
    return table.reset_index(drop=True), applied


def _parse_frames(table: pd.DataFrame, has_apex: bool) -> tuple[dict[str, pd.array], list[list[str]]]:
    """Frames as Int64 and, per row, the problems found (missing, not a number, impossible order)."""
    issues: list[list[str]] = [[] for _ in range(len(table))]
    values: dict[str, list[int | None]] = {}
    for f in FRAMES:
        col: list[int | None] = []
        raw = table[f] if f in table.columns else [""] * len(table)
        for i, text in enumerate(raw):
            if re.fullmatch(r"\d+", text):
                col.append(int(text))
                continue
            col.append(None)
            if f == "apex" and not has_apex:
                continue  # the sheet annotates no apex (SMIC-HS-E): nothing to flag
            issues[i].append(f"{f} missing" if text == "" else f"{f} {text!r} is not a frame number")
        values[f] = col
    for i, (on, ap, off) in enumerate(zip(values["onset"], values["apex"], values["offset"])):
        if on is not None and off is not None and off < on:
            issues[i].append(f"offset {off} before onset {on}")
        if ap is None:
            continue
        if on is not None and ap < on:
            issues[i].append(f"apex {ap} before onset {on}")
        elif on is not None and ap == on:
            issues[i].append(f"apex equals onset ({on})")
        if off is not None and ap > off:
            issues[i].append(f"apex {ap} after offset {off}")
    return {f: pd.array(v, dtype="Int64") for f, v in values.items()}, issues


def _warn_issues(out: pd.DataFrame, source: str) -> None:
    flagged = out[out["issue"] != ""]
    if not len(flagged):
        return
    rows = [f"{s}/{c}: {i}" for s, c, i in zip(flagged["subject"], flagged["clip"], flagged["issue"])]
    shown = "; ".join(rows[:5]) + ("; ..." if len(rows) > 5 else "")
    warnings.warn(
        f"{source}: {len(flagged)} row(s) kept with annotation issues ({shown}). They are flagged in the 'issue' "
        "column: correct them with a fixes table (fixes=...) or leave them out with df[df.issue == ''].",
        AnnotationWarning, stacklevel=3,
    )
