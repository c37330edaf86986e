"""Raw dataset readers: where each annotated clip's frames are in a dataset as distributed.

Illustration (needs the data it names; not run as a doctest)::

    from epir.datasets import locate_clips
    clips = locate_clips("casme2", "/data/CASME2", labels="composite")   # sheet found inside the root

One module per dataset in :mod:`epir.datasets` (``casme2``, ``samm``, ``smic``, ``casme3``, and ``composite``
pooling three of them), each registered in :data:`~epir.datasets.base.RAW_DATASETS` and documenting the layouts
it accepts. Every reader returns the
canonical annotation table of :func:`epir.datasets.sheets.read_annotations` (``dataset, subject, clip, onset,
apex, offset, emotion, label, ...``) with the frame columns:

``frame_dir``  the clip's frame folder ('' when not found);
``layout``     which of the dataset's layouts it was found in;
``frames``     the frame files from the onset to the end of the clip's range (a tuple of paths; the range
               ends at the later of apex and offset when the sheet gives them, else at the folder's last
               frame);
``apex_index`` the 0-based position of the annotated apex in ``frames`` (-1 when the sheet gives no usable
               apex: none, or not after the onset; the pipeline then estimates it);
``problem``    why the clip cannot be processed ('' when it can): ``missing frame: ...`` with what was
               looked for;
``note``       what was decided on the way (e.g. the apex that will be estimated, and why).

How the dataset is found under ``root``: the folder holding the subject folders (``sub01``, ``006``, ``s1``,
``spNO.1``) is searched for up to :data:`SEARCH_DEPTH` levels down, so ``root`` may be the dataset's folder
or any folder above it (e.g. ``part_A/data/part_A`` inside a CAS(ME)^3 download). Frame numbers are the
last number in each file name (:func:`epir.preprocess.video.frame_number`); the sheet's onset, apex and
offset are looked up by that number. The label sheet, unless given, is looked for (by the dataset's usual
file names) in ``root``, its sub-folders and the folders between ``root`` and the dataset.
"""
from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pandas as pd

from epir.datasets.base import LAYOUTS, RAW_DATASETS, SEARCH_DEPTH, RawLayout, list_raw_datasets
from epir.datasets.sheets import read_annotations
from epir.errors import DatasetNotFoundError
from epir.preprocess.video import frame_number, is_image, natural_key

#: Columns every reader adds to the canonical annotation table.
FRAME_COLUMNS = ("frame_dir", "layout", "frames", "apex_index", "problem", "note")

__all__ = ["FRAME_COLUMNS", "LAYOUTS", "RAW_DATASETS", "SEARCH_DEPTH", "RawLayout", "attach_frames",
           "find_dataset_dirs", "find_sheet", "index_frames", "list_raw_datasets", "locate_clips", "read_raw"]


# ------------------------------------------------------------------------------------------ folder search


def _subdirs(folder: Path) -> Iterator[os.DirEntry]:
    """Sub-folders of ``folder``; none when it holds frame images (a frame folder is a leaf)."""
    try:
        with os.scandir(folder) as it:
            entries = []
            for entry in it:
                if entry.name.startswith("."):
                    continue
                if entry.is_file() and is_image(entry.name):
                    return iter(())
                if entry.is_dir():
                    entries.append(entry)
    except OSError:
        return iter(())
    return iter(sorted(entries, key=lambda e: natural_key(e.name)))


def _is_base(folder: Path, pattern: re.Pattern) -> bool:
    return any(pattern.fullmatch(e.name) for e in _subdirs(folder))


def find_dataset_dirs(root: Path, layout: RawLayout, depth: int = SEARCH_DEPTH) -> list[Path]:
    """Folders under ``root`` (itself included) that hold ``layout``'s subject folders, preferred first."""
    found: list[Path] = []
    others = [lay.pattern for lay in LAYOUTS.values() if lay.name != layout.name]
    level = [root]
    for _ in range(depth + 1):
        nxt: list[Path] = []
        for folder in level:
            if _is_base(folder, layout.pattern):
                if not layout.skip_base(folder.relative_to(root)):
                    found.append(folder)
                continue
            if any(_is_base(folder, p) for p in others):
                continue  # another dataset: do not walk through its (possibly huge) frame folders
            nxt.extend(Path(e.path) for e in _subdirs(folder))
        level = nxt
    return sorted(found, key=lambda p: (layout.prefer(p.relative_to(root)), len(p.parts), str(p)))


def find_sheet(root: Path, dataset_dir: Path | None, layout: RawLayout) -> Path | None:
    """The dataset's label sheet: the first of ``layout.sheets`` found in ``root``, its sub-folders, or the
    folders from ``root`` down to ``dataset_dir``.
    """
    folders = [root]
    try:
        folders += sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=str)
    except OSError:
        pass
    if dataset_dir is not None:
        p = dataset_dir
        while p != root and root in p.parents:
            folders.append(p)
            p = p.parent
    files: list[Path] = []
    for folder in folders:
        try:
            files += [f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in (".xlsx", ".xls", ".csv")]
        except OSError:
            continue
    for pattern in layout.sheets:
        hits = sorted({f for f in files if fnmatch.fnmatch(f.name.lower(), pattern.lower())}, key=str)
        if hits:
            return hits[0]
    return None


class _Resolver:
    """Finds relative folders under a base, each component matched case-insensitively (listings cached)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._listing: dict[Path, dict[str, Path]] = {}

    def _children(self, folder: Path) -> dict[str, Path]:
        if folder not in self._listing:
            try:
                self._listing[folder] = {e.name.lower(): Path(e.path) for e in os.scandir(folder) if e.is_dir()}
            except OSError:
                self._listing[folder] = {}
        return self._listing[folder]

    def __call__(self, parts: Sequence[str]) -> Path | None:
        folder = self.base
        for part in parts:
            exact = folder / part
            if exact.is_dir():
                folder = exact
                continue
            hit = self._children(folder).get(part.lower())
            if hit is None:
                return None
            folder = hit
        return folder


def index_frames(folder: Path) -> list[tuple[int, Path]]:
    """(frame number, path) of every numbered image in ``folder``, sorted by number."""
    out = []
    with os.scandir(folder) as it:
        for e in it:
            if e.is_file() and is_image(e.name):
                n = frame_number(e.name)
                if n is not None:
                    out.append((n, Path(e.path)))
    out.sort(key=lambda t: (t[0], natural_key(t[1].name)))
    return out


def _frame_range(row: pd.Series, frames: list[tuple[int, Path]], cut: bool) -> dict[str, object]:
    """The frame columns of one clip found in a folder holding ``frames``."""
    numbers = [n for n, _ in frames]
    position = {n: i for i, (n, _) in reversed(list(enumerate(frames)))}
    onset, apex, offset = (None if pd.isna(row[c]) else int(row[c]) for c in ("onset", "apex", "offset"))
    span = f"frames {numbers[0]}-{numbers[-1]}" if numbers else "no numbered frames"
    note = []
    renumbered = False
    if onset is None:
        return {"problem": "missing frame: the sheet gives no onset frame"}
    if onset in position:
        start = position[onset]
    elif cut and numbers:
        start = 0
        note.append(f"the folder's frame numbers ({span}) differ from the sheet's (onset {onset}): the folder holds "
                    "the expression, so its first frame is the onset and the apex is estimated")
        apex = offset = None
        renumbered = True
    else:
        return {"problem": f"missing frame: onset frame {onset} is not in the folder ({span})"}
    ends = [v for v in (apex, offset) if v is not None and v > numbers[start]]
    stop = len(frames) - 1
    if ends:
        within = [i for i, n in enumerate(numbers) if n <= max(ends)]
        stop = max(within) if within else start
    apex_index = -1
    if apex is None:
        if not renumbered:
            note.append("no apex in the sheet: the apex is estimated")
    elif apex <= onset:
        note.append(f"the sheet's apex ({apex}) is not after the onset ({onset}): the apex is estimated")
    elif apex not in position:
        return {"problem": f"missing frame: apex frame {apex} is not in the folder ({span})"}
    else:
        apex_index = position[apex] - start
    return {"frames": tuple(str(p) for _, p in frames[start:stop + 1]), "apex_index": apex_index,
            "problem": "", "note": "; ".join(note)}


def attach_frames(table: pd.DataFrame, base: Path, layout: RawLayout) -> pd.DataFrame:
    """Add the frame columns (:data:`FRAME_COLUMNS`) to a canonical table, for a dataset folder ``base``."""
    resolve = _Resolver(base)
    indexed: dict[Path, list[tuple[int, Path]]] = {}
    rows = []
    for _, row in table.iterrows():
        out = {"frame_dir": "", "layout": "", "frames": (), "apex_index": -1, "problem": "", "note": ""}
        candidates = layout.clip_dirs(row)
        for name, parts, cut in candidates:
            folder = resolve(parts)
            if folder is None:
                continue
            if folder not in indexed:
                indexed[folder] = index_frames(folder)
            out.update(frame_dir=str(folder), layout=name)
            if not indexed[folder]:
                out["problem"] = f"missing frame: {folder} holds no numbered frame images"
            else:
                out.update(_frame_range(row, indexed[folder], cut))
            break
        else:
            looked = "; ".join(str(base.joinpath(*parts)) for _, parts, _ in candidates[:4])
            out["problem"] = f"missing frame: no frame folder for the clip (looked for {looked})"
        rows.append(out)
    extra = pd.DataFrame(rows, index=table.index, columns=list(FRAME_COLUMNS))
    result = pd.concat([table, extra], axis=1)
    result.attrs = dict(table.attrs)
    return result


def locate_clips(dataset: str, root: str | os.PathLike, *,
                 sheet: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None,
                 labels: str | None = "native", fixes: bool = True) -> pd.DataFrame:
    """The canonical annotation table of ``dataset`` with each clip's frames under ``root``.

    Args:
        dataset: a registered raw dataset (:func:`list_raw_datasets`).
        root: the dataset's folder, or a folder above it.
        sheet: the label sheet (default: looked for inside ``root``, see the module docstring).
        labels: the label scheme (see :func:`epir.annotations.read_annotations`).
        fixes: apply the packaged annotation fixes.

    Returns:
        The table with the :data:`FRAME_COLUMNS`; ``attrs`` adds ``root`` and ``dataset_dir``.
    """
    return RAW_DATASETS.get(dataset)(root, sheet=sheet, labels=labels, fixes=fixes)


def read_raw(layout: RawLayout, root: str | os.PathLike, *, sheet: str | os.PathLike | None = None,
             labels: str | None = "native", fixes: bool = True) -> pd.DataFrame:
    """The shared body of every single-dataset reader (see :func:`locate_clips`)."""
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise DatasetNotFoundError(f"{layout.title} root {root_path} does not exist or is not a folder; pass root "
                                   "(--root) "
                                   f"the folder holding the dataset ({'; '.join(layout.layouts)}).")
    bases = find_dataset_dirs(root_path, layout)
    if not bases:
        raise DatasetNotFoundError(
            f"No {layout.title} frames found under {root_path} (searched {SEARCH_DEPTH} folder levels down for "
            f"subject folders matching {layout.subject_dir!r}). Expected one of these layouts: "
            f"{'; '.join(layout.layouts)}."
        )
    base = bases[0]
    if sheet is None:
        found = find_sheet(root_path, base, layout)
        if found is None:
            raise DatasetNotFoundError(
                f"No {layout.title} label sheet found in {root_path} (looked for {', '.join(layout.sheets)} in it, "
                "its sub-folders and the folders down to the frames). Pass sheet=FILE (--sheet FILE)."
            )
        sheet = found
    table = read_annotations(layout.name, sheet, labels=labels, fixes=fixes)
    table = attach_frames(table, base, layout)
    table.attrs.update(root=str(root_path), dataset_dir=str(base),
                       other_dataset_dirs=[str(b) for b in bases[1:]])
    return table
