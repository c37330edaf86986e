"""MEGC2019 composite optical-flow set (CASME II + SAMM + SMIC, 442 samples, 68 subjects).

Layout (as in the public HTNet repository)::

    ROOT/combined_3_class2_for_optical_flow.csv      dataset,sub,filename_o,label,apex,imagename,sub_filename
    ROOT/datasets/STSNet_whole_norm_u_v_os/<sub>_<filename_o> .png   (note the space before .png)

Each PNG is a 28x28 RGB image whose channels are u, v and optical strain, each min-max normalised to 0-255.
OpenCV reads it as BGR; the loader reverses that, so ``x`` is in epir's canonical order u, v, strain.
The CSV and the image folder are cross-checked: a missing or unreadable image, an unknown label or source
dataset, or a duplicate row is an error naming the CSV line and the file.

Folders written by ``epir preprocess`` add two optional files, read when present: ``epir_dataset.json``
(``class_names`` and ``sources``, so that e.g. CAS(ME)^3 clips or five-class labels load) and
``landmarks.csv`` (per row, HTNet's five points on the map, put in ``info["landmarks"]`` for the mosaic input).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from epir.data.base import COMPOSITE_CLASSES, FlowDataset, register_dataset
from epir.errors import DatasetError, DatasetNotFoundError

ENV_VAR = "EPIR_MEGC2019_ROOT"
CSV_NAME = "combined_3_class2_for_optical_flow.csv"
IMAGE_DIR = Path("datasets") / "STSNet_whole_norm_u_v_os"
REQUIRED_COLUMNS = ("dataset", "sub", "filename_o", "label")
SOURCES = ("casme2", "samm", "smic")
#: Optional sidecar written by ``epir preprocess``: {"class_names": [...], "sources": [...], ...}.
META_NAME = "epir_dataset.json"
#: Optional per-row landmarks written by ``epir preprocess``: dataset, sub, filename_o, then 5 (x, y) points.
LANDMARKS_NAME = "landmarks.csv"


def resolve_root(root: str | os.PathLike | None) -> Path:
    """The dataset root from ``root`` or ``$EPIR_MEGC2019_ROOT``; raises if neither points to the CSV."""
    if root is None:
        root = os.environ.get(ENV_VAR)
        if not root:
            raise DatasetNotFoundError(
                f"No root given for dataset 'megc2019'. Pass --root DIR (the folder holding {CSV_NAME} and "
                f"{IMAGE_DIR}/) or set the environment variable {ENV_VAR}."
            )
    path = Path(root).expanduser()
    if not (path / CSV_NAME).is_file():
        raise DatasetNotFoundError(
            f"{path / CSV_NAME} does not exist. The megc2019 root must hold {CSV_NAME} and {IMAGE_DIR}/ "
            f"(the public HTNet repository's layout); check --root or {ENV_VAR}."
        )
    return path


def image_path(root: Path, sub: str, clip: str) -> Path:
    """Path of the flow image of subject ``sub``'s clip ``clip`` (with the layout's space before .png)."""
    return root / IMAGE_DIR / f"{sub}_{clip} .png"


def read_flow_image(path: Path, where: str) -> np.ndarray:
    """Read one flow PNG as float32 (3, H, W) in the order u, v, strain; ``where`` names the CSV row."""
    if not path.is_file():
        raise DatasetNotFoundError(f"{where}: image {path} does not exist. Every CSV row needs its image.")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(f"{where}: image {path} cannot be read (corrupt or not an image); replace the file.")
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise DatasetError(
            f"{where}: image {path} has shape {img.shape} and dtype {img.dtype}; expected an 8-bit "
            f"3-channel (u, v, strain) image."
        )
    return np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32)


@register_dataset(description="MEGC2019 composite flow maps (442 samples, 68 subjects); --root or $EPIR_MEGC2019_ROOT")
def megc2019(root: str | None = None) -> FlowDataset:
    """Load the composite set; ``root`` defaults to ``$EPIR_MEGC2019_ROOT``."""
    base = resolve_root(root)
    csv_path = base / CSV_NAME
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise DatasetError(
            f"{csv_path}: the file is empty; expected a header row {','.join(REQUIRED_COLUMNS)},... and one row per "
            f"sample."
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DatasetError(f"{csv_path}: cannot parse as CSV ({e}).") from None
    class_names, sources = _read_meta(base)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise DatasetError(
            f"{csv_path}: missing column(s) {missing}; expected at least {list(REQUIRED_COLUMNS)} "
            f"(got {list(table.columns)})."
        )
    xs, ys, subjects, subject_ids, row_sources, clips = [], [], [], [], [], []
    seen: dict[tuple[str, str, str], int] = {}
    for i, row in enumerate(table.itertuples(index=False)):
        line = i + 2  # 1-based, after the header (blank lines are kept so the count stays true)
        where = f"{csv_path} line {line}"
        source, sub, clip, label = (str(getattr(row, c)).strip() for c in REQUIRED_COLUMNS)
        if not any(str(v).strip() for v in row):
            continue
        if source not in sources:
            raise DatasetError(f"{where}: unknown dataset {source!r}; expected one of {', '.join(sources)}.")
        if not sub or not clip:
            raise DatasetError(f"{where}: empty 'sub' or 'filename_o'; every row needs a subject and a clip.")
        for name, value in (("sub", sub), ("filename_o", clip)):
            if "/" in value or "\\" in value or value in (".", "..") or value.startswith("."):
                raise DatasetError(
                    f"{where}: {name} {value!r} is not a plain name (no '/', '\\' or leading '.'): images are read "
                    f"only from inside {base / IMAGE_DIR}."
                )
        if label not in [str(i) for i in range(len(class_names))]:
            names = ", ".join(f"{i} ({n})" for i, n in enumerate(class_names))
            raise DatasetError(f"{where}: unknown label {label!r}; expected one of {names}.")
        key = (source, sub, clip)
        if key in seen:
            raise DatasetError(
                f"{where}: duplicate row for {source}/{sub}/{clip} (first at line {seen[key]}); remove one."
            )
        seen[key] = line
        xs.append(read_flow_image(image_path(base, sub, clip), where))
        ys.append(int(label))
        subjects.append(f"{source}/{sub}")
        subject_ids.append(sub)
        row_sources.append(source)
        clips.append(clip)
    if not xs:
        raise DatasetError(f"{csv_path}: no rows.")
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise DatasetError(f"{base / IMAGE_DIR}: images differ in size {sorted(shapes)}; expected one size.")
    info: dict = {"root": str(base)}
    landmarks = _read_landmarks(base, list(zip(row_sources, subject_ids, clips)))
    if landmarks is not None:
        info["landmarks"] = landmarks
    return FlowDataset(
        x=torch.from_numpy(np.stack(xs)),
        y=torch.tensor(ys, dtype=torch.int64),
        subjects=subjects,
        subject_ids=subject_ids,
        sources=row_sources,
        clips=clips,
        class_names=class_names,
        name="megc2019",
        info=info,
    )


def _read_meta(base: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Class names and allowed source datasets: from ``epir_dataset.json`` when present, else the composite's."""
    path = base / META_NAME
    if not path.is_file():
        return COMPOSITE_CLASSES, SOURCES
    try:
        meta = json.loads(path.read_text())
        classes, sources = tuple(meta["class_names"]), tuple(meta["sources"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{path}: cannot read class_names and sources ({e}); rerun epir preprocess or delete "
                           "the file to use the composite's classes.") from None
    if not classes or not all(isinstance(c, str) for c in classes):
        raise DatasetError(f"{path}: class_names must be a non-empty list of names, got {meta['class_names']!r}.")
    return classes, sources


def _read_landmarks(base: Path, keys: list[tuple[str, str, str]]) -> np.ndarray | None:
    """(N, 5, 2) landmarks from ``landmarks.csv`` in the order of ``keys`` (None when the file is absent)."""
    path = base / LANDMARKS_NAME
    if not path.is_file():
        return None
    table = pd.read_csv(path, dtype={"dataset": str, "sub": str, "filename_o": str}, keep_default_na=False)
    points = {(r[0], r[1], r[2]): np.asarray(r[3:13], dtype=np.float64) for r in table.itertuples(index=False)}
    missing = [k for k in keys if k not in points]
    if missing or table.shape[1] < 13:
        raise DatasetError(f"{path}: no landmarks for {'/'.join(missing[0]) if missing else 'any row'}; expected "
                           f"dataset, sub, filename_o and 10 coordinates per CSV row. Rerun epir preprocess.")
    return np.stack([points[k].reshape(5, 2) for k in keys])
