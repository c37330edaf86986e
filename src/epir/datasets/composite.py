"""The MEGC2019 composite set from the raw datasets: CASME II + SAMM + SMIC-HS, labels of the ``composite`` scheme.

``ROOT`` is a folder holding the three datasets, each in one of its own layouts (see
:mod:`~epir.datasets.casme2`, :mod:`~epir.datasets.samm`,
:mod:`~epir.datasets.smic`), at most four levels down; they are found by their subject folders
(``sub01``, ``006``, ``s1``), so the folder names do not matter. Usual names::

    ROOT/CASME2/CASME2_RAW_selected/sub01/EP02_01f/img46.jpg     ROOT/CASME2/CASME2-coding-20140508.xlsx
    ROOT/SAMM/006/006_1_2/006_05562.jpg                         ROOT/SAMM/SAMM_Micro_FACS_Codes_v2.xlsx
    ROOT/SMIC/HS/s1/micro/negative/s1_ne_01/image586389.bmp     ROOT/SMIC/smic_apex.xlsx

The sheets are the composite's: CASME II's 2014 coding sheet (``CASME2-coding-20140508.xlsx``; the 2019
revision relabels clips and is not used unless given), SAMM's v2 codes, SMIC's ``smic_apex.xlsx`` (else
``SMIC-HS-E_annotation.xlsx``), each looked for in ``ROOT``, its sub-folders and the dataset's own folders,
or given as ``sheet={"casme2": ..., "samm": ..., "smic": ...}`` (``--sheet casme2=FILE`` on the command
line). With the packaged fixes this gives the official 145 + 133 + 164 = 442 clips. Subjects are namespaced
by the ``dataset`` column (``casme2/sub01`` once loaded), as in the composite set.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import pandas as pd

from epir.datasets.base import LAYOUTS, RAW_DATASETS
from epir.datasets.frames import read_raw
from epir.errors import ConfigError, did_you_mean

#: The composite's datasets, in the order of the official list.
PARTS = ("casme2", "samm", "smic")
#: The CASME II sheet the composite was made from.
CASME2_SHEET = "CASME2-coding-20140508.xlsx"


def _sheets(sheet: str | os.PathLike | Mapping[str, str | os.PathLike] | None) -> dict[str, str | os.PathLike]:
    if sheet is None:
        return {}
    if not isinstance(sheet, Mapping):
        raise ConfigError("The composite set reads three label sheets: give them per dataset, e.g. "
                          "sheet={{'casme2': ...}} "
                          f"(--sheet casme2=CASME2-coding-20140508.xlsx), got {sheet!r}.")
    unknown = [k for k in sheet if k not in PARTS]
    if unknown:
        raise ConfigError(f"sheet (--sheet) {unknown[0]}=...: {unknown[0]!r} is not a dataset of the composite set."
                          f"{did_you_mean(unknown[0], PARTS)} Its datasets: {', '.join(PARTS)}.")
    return dict(sheet)


@RAW_DATASETS.register("composite", description="CASME II + SAMM + SMIC-HS under one root, composite labels "
                                                "(442 clips with the composite's sheets)")
def composite(root: str | os.PathLike, *, sheet: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None,
              labels: str | None = "composite", fixes: bool = True) -> pd.DataFrame:
    """The composite set's clips under ``root`` (see the module docstring).

    Args:
        root: a folder holding CASME II, SAMM and SMIC-HS.
        sheet: per dataset, its label sheet (default: looked for).
        labels: must be ``composite`` (``native`` is taken to mean it).
        fixes: apply the packaged annotation fixes.
    """
    if labels not in ("composite", "native"):
        raise ConfigError(f"The composite set has the 'composite' labels (negative, positive, surprise), got "
                          f"labels={labels!r} (--labels); preprocess a single dataset for its other schemes.")
    sheets = _sheets(sheet)
    tables = []
    for name in PARTS:
        layout = LAYOUTS[name]
        if name == "casme2":
            layout = dataclasses.replace(layout, sheets=(CASME2_SHEET,))
        tables.append(read_raw(layout, root, sheet=sheets.get(name), labels="composite", fixes=fixes))
    out = pd.concat(tables, ignore_index=True)
    out.attrs = {"dataset": "composite", "scheme": "composite", "classes": tables[0].attrs["classes"],
                 "root": str(root), "sheets": {n: t.attrs["sheet"] for n, t in zip(PARTS, tables)},
                 "dataset_dirs": {n: t.attrs["dataset_dir"] for n, t in zip(PARTS, tables)},
                 "fixes": [f for t in tables for f in t.attrs.get("fixes", [])]}
    return out
