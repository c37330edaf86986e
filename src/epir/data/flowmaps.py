"""Flow-map folders as datasets: ``flowmaps`` (any folder ``epir preprocess`` writes) and its alias ``megc2019``
(the MEGC2019 composite optical-flow set: CASME II + SAMM + SMIC, 442 samples, 68 subjects).

The folder format is :mod:`epir.flowmaps`; this module turns one into a :class:`~epir.data.base.FlowDataset`.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch

from epir.data.base import FlowDataset, register_dataset
from epir.errors import DatasetError
from epir.flowmaps import (
    CSV_NAME,
    FORMAT,
    IMAGE_DIR,
    REQUIRED_COLUMNS,
    image_path,
    read_flow_image,
    read_landmarks,
    read_meta,
    resolve_root,
)


def load_flowmaps(root: str | os.PathLike | None = None, dataset_name: str = FORMAT) -> FlowDataset:
    """Load a flow-map folder (:mod:`epir.flowmaps`) as dataset ``dataset_name``; ``root`` defaults to
    ``$EPIR_MEGC2019_ROOT``. The folder and its index are cross-checked: a missing or unreadable image, an unknown
    label or source dataset, or a duplicate row is an error naming the CSV line and the file.
    """
    base = resolve_root(root, dataset_name)
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
    class_names, sources = read_meta(base)
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
    landmarks = read_landmarks(base, list(zip(row_sources, subject_ids, clips)))
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
        name=dataset_name,
        info=info,
    )


@register_dataset(description="a flow-map folder as epir preprocess writes it (index CSV + u,v,strain PNGs); --root")
def flowmaps(root: str | None = None) -> FlowDataset:
    """Load a flow-map folder (:func:`load_flowmaps`)."""
    return load_flowmaps(root, "flowmaps")


@register_dataset(description="MEGC2019 composite flow maps (442 samples, 68 subjects): the flowmaps format; "
                              "--root or $EPIR_MEGC2019_ROOT")
def megc2019(root: str | None = None) -> FlowDataset:
    """Load the composite set (the ``flowmaps`` format under the name ``megc2019``); ``root`` defaults to
    ``$EPIR_MEGC2019_ROOT``.
    """
    return load_flowmaps(root, "megc2019")
