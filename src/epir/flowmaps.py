"""The flow-map folder format (``flowmaps``): what ``epir preprocess`` writes and ``--dataset flowmaps`` reads.

It is the layout of the public MEGC2019 composite set (as in the HTNet repository), hence its alias
``megc2019``::

    ROOT/combined_3_class2_for_optical_flow.csv      dataset,sub,filename_o,label,apex,imagename,sub_filename
    ROOT/datasets/STSNet_whole_norm_u_v_os/<sub>_<filename_o> .png   (note the space before .png)

Each PNG is an RGB image (28x28 in the composite) whose channels are u, v and optical strain, each min-max
normalised to 0-255; OpenCV reads it as BGR and :func:`read_flow_image` reverses that, so maps come out in
epir's canonical order u, v, strain. Two optional files, read when present: ``epir_dataset.json``
(``class_names`` and ``sources``, so that e.g. CAS(ME)^3 clips or five-class labels load) and ``landmarks.csv``
(per row, HTNet's five points on the map).

This module knows the format only (paths, names, one image, the sidecar files); it imports neither
:mod:`epir.data` (the reader, :mod:`epir.data.flowmaps`) nor :mod:`epir.preprocess` (the writer,
:mod:`epir.preprocess.batch`), which both import it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from epir.errors import DatasetError, DatasetNotFoundError

#: The format's name (``--dataset flowmaps``); ``megc2019`` is an alias.
FORMAT = "flowmaps"
ENV_VAR = "EPIR_MEGC2019_ROOT"
CSV_NAME = "combined_3_class2_for_optical_flow.csv"
IMAGE_DIR = Path("datasets") / "STSNet_whole_norm_u_v_os"
REQUIRED_COLUMNS = ("dataset", "sub", "filename_o", "label")
#: The source datasets and classes of a folder without ``epir_dataset.json`` (the MEGC2019 composite's).
SOURCES = ("casme2", "samm", "smic")
COMPOSITE_CLASSES = ("negative", "positive", "surprise")
#: Optional sidecar written by ``epir preprocess``: {"class_names": [...], "sources": [...], ...}.
META_NAME = "epir_dataset.json"
#: Optional per-row landmarks written by ``epir preprocess``: dataset, sub, filename_o, then 5 (x, y) points.
LANDMARKS_NAME = "landmarks.csv"


def resolve_root(root: str | os.PathLike | None, name: str = FORMAT) -> Path:
    """The folder from ``root`` or ``$EPIR_MEGC2019_ROOT``; raises if neither points to the index CSV."""
    if root is None:
        root = os.environ.get(ENV_VAR)
        if not root:
            raise DatasetNotFoundError(
                f"No root given for dataset {name!r}. Set data.root (--root DIR) to the folder holding {CSV_NAME} and "
                f"{IMAGE_DIR}/, or set the environment variable {ENV_VAR}."
            )
    path = Path(root).expanduser()
    if not (path / CSV_NAME).is_file():
        raise DatasetNotFoundError(
            f"{path / CSV_NAME} does not exist. The {name} root must hold {CSV_NAME} and {IMAGE_DIR}/ "
            "(the public HTNet repository's layout, as epir preprocess writes it); check data.root (--root) or "
            f"{ENV_VAR}."
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


def read_meta(base: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
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


def read_landmarks(base: Path, keys: list[tuple[str, str, str]]) -> np.ndarray | None:
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
