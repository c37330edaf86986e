"""A whole raw dataset to the flow-map layout every epir model reads: ``epir preprocess DATASET --root RAW --out DIR``.

Illustration (needs the data it names; not run as a doctest)::

    from epir.preprocess import PreprocessSettings, preprocess_dataset
    summary = preprocess_dataset("casme2", "/data/CASME2", "data/casme2-flow", labels="composite", jobs=2)
    ds = epir.load_dataset("flowmaps", root="data/casme2-flow")      # every model and LOSO, unchanged

The clips come from the dataset's reader (:mod:`epir.preprocess.datasets`); each goes through
:func:`epir.preprocess.pipeline.run_clip` (apex from the sheet where it gives a usable one and
``annotated_apex`` is on, else estimated with ``apex_method``). Outputs under ``OUT``:

``combined_3_class2_for_optical_flow.csv``  ``dataset,sub,filename_o,label,apex,imagename,sub_filename``, one
    row per processed clip (``apex`` is the apex's frame number) - the MEGC2019 composite's CSV;
``datasets/STSNet_whole_norm_u_v_os/<sub>_<clip> .png``  the (3, size, size) map as an 8-bit image, written
    BGR like the composite's (R = u, G = v, B = strain), so :mod:`epir.data.megc2019` loads it unchanged;
``epir_dataset.json``  class names and source datasets (read by the megc2019 loader, so that e.g. CAS(ME)^3
    or five-class labels load), the settings and their key;
``flow/<dataset>/<sub>/<clip>.npz``  the unquantised ``flow`` (H, W, 2) and ``strain`` (H, W) on the face
    crop, the ``map``, the onset and apex 68 ``*_landmarks`` (crop pixels) and ``matrix``, the frame
    numbers, indices and paths of onset and apex, and the ``settings`` (JSON);
``landmarks.csv``  per processed clip, HTNet's five points (eyes, nose tip, mouth corners) of the onset face
    on the ``size`` x ``size`` map (read by the megc2019 loader into ``info["landmarks"]`` for the mosaic
    input); not written with ``align=False``;
``report.csv``  every clip of the sheet: ``dataset, subject, clip, status`` (``ok`` or ``skipped``),
    ``reason`` (why it was skipped: ``missing frame: ...``, ``unreadable image: ...``, ``no face: ...``),
    ``note``, onset and apex frame numbers, whether the apex was estimated, and whether the result came
    from the cache;
``manifest.json``  the cache: per clip, the settings key and a fingerprint of its inputs. Run the same
    command again and every clip already processed with the same settings is reused, not recomputed.

Clips run in parallel over ``jobs`` processes (joblib), one OpenCV thread each, with a progress bar.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from epir.datasets import locate_clips
from epir.errors import ConfigError, DatasetError, EpirError
from epir.fileio import writable_dir, write_atomic
from epir.flowmaps import CSV_NAME, META_NAME, image_path
from epir.preprocess.face import FaceAligner, five_points
from epir.preprocess.pipeline import ClipResult, PreprocessSettings, run_clip
from epir.preprocess.video import FrameSequence, frame_number

CSV_COLUMNS = ("dataset", "sub", "filename_o", "label", "apex", "imagename", "sub_filename")
REPORT_NAME = "report.csv"
MANIFEST_NAME = "manifest.json"
LANDMARKS_NAME = "landmarks.csv"
REPORT_COLUMNS = ("dataset", "subject", "clip", "status", "reason", "note", "onset", "apex", "apex_estimated",
                  "cached")
#: Columns of landmarks.csv after dataset, sub, filename_o: (x, y) of HTNet's five points on the map.
LANDMARK_COLUMNS = tuple(f"{p}_{c}" for p in ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
                         for c in "xy")
MANIFEST_SAVE_SECONDS = 5.0


@dataclass
class PreprocessSummary:
    """What :func:`preprocess_dataset` did.

    Attributes:
        out: the output folder.
        report: one row per clip (the columns of ``report.csv``).
        seconds: wall time.
    """

    out: Path
    report: pd.DataFrame
    seconds: float

    @property
    def ok(self) -> int:
        """Clips written."""
        return int((self.report["status"] == "ok").sum())

    @property
    def skipped(self) -> int:
        """Clips skipped (no face, missing or unreadable frames)."""
        return int((self.report["status"] == "skipped").sum())

    @property
    def cached(self) -> int:
        """Clips taken from the cache."""
        return int(self.report["cached"].sum())

    def text(self) -> str:
        """One paragraph for the command line: counts, and the reasons of the skipped clips."""
        lines = [f"{len(self.report)} clips: {self.ok} processed ({self.cached} from the cache), {self.skipped} "
                 f"skipped; {self.seconds:.1f} s; outputs in {self.out}"]
        bad = self.report[self.report["status"] == "skipped"]
        for row in bad.head(10).itertuples(index=False):
            lines.append(f"  skipped {row.dataset}/{row.subject}/{row.clip}: {row.reason}")
        if len(bad) > 10:
            lines.append(f"  ... and {len(bad) - 10} more (see {self.out / REPORT_NAME})")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- writing


def write_map_png(path: Path, fmap: np.ndarray) -> None:
    """Write a (3, H, W) uint8 u, v, strain map as the composite's PNG (OpenCV BGR: R = u, G = v, B = strain)."""
    bgr = np.ascontiguousarray(np.asarray(fmap, dtype=np.uint8).transpose(1, 2, 0)[:, :, ::-1])

    def write(tmp: Path) -> None:
        ok, data = cv2.imencode(".png", bgr)
        if not ok:
            raise EpirError(f"OpenCV could not encode the flow map for {path}.")
        tmp.write_bytes(data.tobytes())

    write_atomic(path, write)


def save_clip(result: ClipResult, npz: Path, png: Path, settings: PreprocessSettings,
              extra: Mapping[str, Any] | None = None) -> None:
    """Write one clip's ``npz`` (flow, strain, map, landmarks, settings, ``extra``) and its map ``png``."""
    arrays: dict[str, Any] = {"flow": result.flow, "strain": result.strain, "map": result.map,
                              "onset_index": result.onset, "apex_index": result.apex,
                              "apex_estimated": result.apex_estimated,
                              "settings": json.dumps(settings.to_dict(), sort_keys=True)}
    for name, face in (("onset", result.onset_face), ("apex", result.apex_face)):
        if face is not None:
            arrays[f"{name}_landmarks"] = face.landmarks
            arrays["matrix"] = face.matrix
    for k, v in (extra or {}).items():
        arrays[k] = v

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    write_atomic(npz, write)
    write_map_png(png, result.map)


# --------------------------------------------------------------------------------------------- one clip job


def _fingerprint(spec: Mapping[str, Any], key: str) -> str:
    frames = spec["frames"]
    stats: list[tuple[int, int] | None] = []
    for p in (frames[0], frames[spec["apex_index"]] if spec["apex_index"] >= 0 else frames[-1]):
        try:
            st = os.stat(p)
            stats.append((st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append(None)
    text = json.dumps([key, len(frames), frames[0], frames[-1], spec["apex_index"], stats], default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def process_one(spec: Mapping[str, Any], settings: PreprocessSettings, out: Path,
                aligner: FaceAligner | None = None, *, single_thread: bool = False) -> dict[str, Any]:
    """Process one located clip (a row of a reader's table as a dict) and write its outputs.

    Returns the clip's manifest record: ``status`` ``ok`` (with frame numbers, the five map landmarks) or
    ``skipped`` with the ``reason``. A :class:`~epir.errors.DatasetError` of the clip (a ``ClipError``: missing
    or unreadable frame, no face, ...) skips it; anything else - dlib not installed, an unknown flow parameter,
    a bug - would fail every clip alike, so it propagates and stops the run.
    """
    if single_thread:
        cv2.setNumThreads(1)
    record: dict[str, Any] = {"status": "skipped", "reason": "", "note": spec.get("note", ""),
                              "fingerprint": spec["fingerprint"], "settings_key": settings.key()}
    apex = spec["apex_index"] if settings.annotated_apex and spec["apex_index"] >= 0 else None
    if apex is None and not settings.annotated_apex:
        record["note"] = "; ".join(filter(None, [record["note"], f"apex estimated ({settings.apex_method})"]))
    frames = FrameSequence(spec["frames"])
    try:
        result = run_clip(frames, 0, apex, settings, aligner)
    except DatasetError as e:
        kind = getattr(e, "kind", "bad data")
        record["reason"] = f"{kind}: {e}"
        return record
    onset_path, apex_path = spec["frames"][result.onset], spec["frames"][result.apex]
    onset_no, apex_no = frame_number(onset_path), frame_number(apex_path)
    save_clip(result, out / spec["npz"], out / spec["png"], settings,
              {"onset_frame": -1 if onset_no is None else onset_no, "apex_frame": -1 if apex_no is None else apex_no,
               "onset_path": onset_path, "apex_path": apex_path})
    if result.apex_estimated and settings.annotated_apex and "estimated" not in record["note"]:
        record["note"] = "; ".join(filter(None, [record["note"], f"apex estimated ({settings.apex_method})"]))
    record.update(status="ok", onset=onset_no, apex=apex_no,
                  apex_estimated=result.apex_estimated, timings=result.timings)
    if result.onset_face is not None:
        points = five_points(result.onset_face.landmarks) * (settings.size / result.onset_face.image.shape[0])
        record["landmarks"] = [round(float(v), 4) for v in points.ravel()]
    return record


# ------------------------------------------------------------------------------------------- whole dataset


def _load_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # a damaged cache is only a cache: everything is recomputed
    return data.get("clips", {}) if isinstance(data, dict) else {}


def _save_manifest(path: Path, clips: Mapping[str, Any]) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps({"version": 1, "clips": clips}, indent=1, sort_keys=True)))


def _specs(table: pd.DataFrame, settings: PreprocessSettings) -> list[dict[str, Any]]:
    key = settings.key()
    specs = []
    for row in table.itertuples(index=False):
        spec = {"id": f"{row.dataset}/{row.subject}/{row.clip}", "dataset": row.dataset, "subject": row.subject,
                "clip": row.clip, "frames": list(row.frames), "apex_index": int(row.apex_index),
                "problem": row.problem, "note": row.note,
                "npz": str(Path("flow") / row.dataset / row.subject / f"{row.clip}.npz"),
                "png": str(image_path(Path("."), row.subject, row.clip))}
        spec["fingerprint"] = _fingerprint(spec, key) if spec["frames"] else ""
        specs.append(spec)
    return specs


def preprocess_dataset(dataset: str, root: str | os.PathLike, out: str | os.PathLike, *,
                       sheet: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None,
                       labels: str | None = None, settings: PreprocessSettings | None = None,
                       jobs: int = 1, progress: bool = True, aligner: FaceAligner | None = None) -> PreprocessSummary:
    """Preprocess every annotated clip of a raw dataset into ``out`` (see the module docstring).

    Args:
        dataset: a registered raw dataset (``casme2``, ``samm``, ``smic``, ``casme3``, ``composite``).
        root: the raw dataset's folder (or one above it; for ``composite`` the folder holding the three).
        out: the output folder (created; reused as the cache when it exists).
        sheet: the label sheet (default: found inside ``root``); for ``composite`` a dict per dataset.
        labels: the label scheme (default: ``composite`` for the composite set, else the dataset's native one).
        settings: the preprocessing settings (default: ``PreprocessSettings()``).
        jobs: parallel processes (1: in this process; -1: one per core).
        progress: show a progress bar.
        aligner: a face aligner to use instead of ``settings.aligner()`` (e.g. with an injected detector).

    Returns:
        A :class:`PreprocessSummary`; skipped clips are in its report, never an exception.

    Raises:
        DatasetNotFoundError: no dataset or label sheet under ``root``.
        UnknownNameError: unknown dataset.
        ConfigError: bad ``jobs`` or label scheme.
    """
    settings = settings or PreprocessSettings()
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs == 0:
        raise ConfigError(f"jobs must be a positive number of processes or -1 (one per core), got {jobs!r}.")
    start = time.perf_counter()
    labels = labels or ("composite" if dataset == "composite" else "native")
    table = locate_clips(dataset, root, sheet=sheet, labels=labels)
    out = writable_dir(out, "flow-map folder")
    specs = _specs(table, settings)
    manifest_path = out / MANIFEST_NAME
    manifest = _load_manifest(manifest_path)
    key = settings.key()
    aligner = aligner or (settings.aligner() if settings.align else None)

    cached: set[str] = set()
    todo = []
    for spec in specs:
        old = manifest.get(spec["id"], {})
        if spec["problem"]:
            manifest[spec["id"]] = {"status": "skipped", "reason": spec["problem"], "note": spec["note"],
                                    "fingerprint": "", "settings_key": key}
        elif (old.get("status") == "ok" and old.get("settings_key") == key
              and old.get("fingerprint") == spec["fingerprint"]
              and (out / spec["npz"]).is_file() and (out / spec["png"]).is_file()):
            cached.add(spec["id"])
        else:
            todo.append(spec)

    bar = tqdm(total=len(todo), desc=f"preprocess {dataset}", unit="clip", disable=not progress or not todo)
    last_save = time.monotonic()
    try:
        for spec_id, record in _run(todo, settings, out, aligner, jobs):
            manifest[spec_id] = record
            bar.update(1)
            if time.monotonic() - last_save > MANIFEST_SAVE_SECONDS:
                _save_manifest(manifest_path, manifest)
                last_save = time.monotonic()
    finally:
        bar.close()
        _save_manifest(manifest_path, manifest)

    report = _write_outputs(out, table, specs, manifest, cached, settings, dataset, labels)
    return PreprocessSummary(out=out, report=report, seconds=time.perf_counter() - start)


def _run(todo: list[dict[str, Any]], settings: PreprocessSettings, out: Path, aligner: FaceAligner | None,
         jobs: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """(clip id, manifest record) of every clip in ``todo``, in the order they finish."""
    if not todo:
        return
    if jobs == 1 or len(todo) == 1:
        for spec in todo:
            yield spec["id"], process_one(spec, settings, out, aligner)
        return
    def job(spec: dict[str, Any]) -> tuple[Any, Any]:
        return spec["id"], process_one(spec, settings, out, aligner, single_thread=True)

    yield from Parallel(n_jobs=jobs, return_as="generator_unordered")(delayed(job)(s) for s in todo)


def _write_outputs(out: Path, table: pd.DataFrame, specs: list[dict[str, Any]], manifest: Mapping[str, Any],
                   cached: set[str], settings: PreprocessSettings, dataset: str, labels: str) -> pd.DataFrame:
    rows, csv_rows, landmark_rows = [], [], []
    for spec, label in zip(specs, table["label"]):
        rec = manifest.get(spec["id"], {})
        ok = rec.get("status") == "ok"
        rows.append({"dataset": spec["dataset"], "subject": spec["subject"], "clip": spec["clip"],
                     "status": "ok" if ok else "skipped", "reason": "" if ok else rec.get("reason", ""),
                     "note": rec.get("note", ""), "onset": rec.get("onset") if ok else None,
                     "apex": rec.get("apex") if ok else None, "apex_estimated": bool(rec.get("apex_estimated", False)),
                     "cached": spec["id"] in cached})
        if not ok:
            continue
        label = "" if pd.isna(label) else int(label)
        csv_rows.append({"dataset": spec["dataset"], "sub": spec["subject"], "filename_o": spec["clip"],
                         "label": label, "apex": rec.get("apex", ""),
                         "imagename": f"{spec['subject']}_{spec['clip']}.jpg", "sub_filename": ""})
        if rec.get("landmarks") is not None:
            landmark_rows.append({"dataset": spec["dataset"], "sub": spec["subject"], "filename_o": spec["clip"],
                                  **dict(zip(LANDMARK_COLUMNS, rec["landmarks"]))})
    report = pd.DataFrame(rows, columns=list(REPORT_COLUMNS))
    report["onset"] = report["onset"].astype("Int64")
    report["apex"] = report["apex"].astype("Int64")
    write_atomic(out / REPORT_NAME, lambda tmp: report.to_csv(tmp, index=False))
    csv = pd.DataFrame(csv_rows, columns=list(CSV_COLUMNS))
    write_atomic(out / CSV_NAME, lambda tmp: csv.to_csv(tmp, index=False))
    landmarks_path = out / LANDMARKS_NAME
    if settings.align and len(landmark_rows) == len(csv_rows):
        lm = pd.DataFrame(landmark_rows, columns=["dataset", "sub", "filename_o", *LANDMARK_COLUMNS])
        write_atomic(landmarks_path, lambda tmp: lm.to_csv(tmp, index=False))
    elif landmarks_path.exists():
        landmarks_path.unlink()  # stale: would not match the maps
    meta = {"created_by": "epir preprocess", "dataset": dataset, "labels": table.attrs.get("scheme") or labels,
            "class_names": list(table.attrs.get("classes") or ()),
            "sources": sorted(set(table["dataset"])), "settings": settings.to_dict(), "settings_key": settings.key(),
            "root": str(table.attrs.get("root", "")), "sheet": table.attrs.get("sheet") or table.attrs.get("sheets")}
    write_atomic(out / META_NAME, lambda tmp: tmp.write_text(json.dumps(meta, indent=2, default=str)))
    return report


__all__ = ["CSV_COLUMNS", "LANDMARK_COLUMNS", "MANIFEST_NAME", "REPORT_COLUMNS", "REPORT_NAME", "PreprocessSummary",
           "preprocess_dataset", "process_one", "save_clip", "write_map_png"]
