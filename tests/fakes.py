"""Tiny fake data for fast tests: a MEGC2019-layout tree on disk and in-memory ``FlowDataset`` objects.

Both are class-dependent (label ``c`` brightens channel ``c``) so that even a two-epoch STSTNet learns
something, and tiny (a few subjects, a few clips, 28x28) so that a whole LOSO takes well under a second.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from epir.data.base import COMPOSITE_CLASSES, FlowDataset

#: The composite classes, as a run's predictions name them.
CLASSES = tuple(COMPOSITE_CLASSES)
CSV_NAME = "combined_3_class2_for_optical_flow.csv"
IMAGE_DIR = Path("datasets") / "STSNet_whole_norm_u_v_os"
CSV_HEADER = "dataset,sub,filename_o,label,apex,imagename,sub_filename"

#: Default fake composite: 6 subjects over the three sources, 4 clips each, every label present.
#: Keys are ``source/subject_id`` (subject ids are unique across sources, as in the real set).
DEFAULT_SUBJECTS: dict[str, list[tuple[str, int]]] = {
    "casme2/sub01": [("EP01_01f", 0), ("EP02_01f", 1), ("EP03_01f", 2), ("EP04_01f", 0)],
    "casme2/sub02": [("EP01_02f", 1), ("EP02_02f", 2), ("EP03_02f", 0), ("EP04_02f", 1)],
    "samm/006": [("006_1_2", 2), ("006_1_3", 0), ("006_1_4", 1), ("006_1_5", 2)],
    "samm/007": [("007_6_1", 0), ("007_6_2", 0), ("007_6_3", 1), ("007_6_4", 2)],
    "smic/s01": [("s01_ne_01", 0), ("s01_po_01", 1), ("s01_sur_01", 2), ("s01_ne_02", 0)],
    "smic/s02": [("s02_ne_01", 0), ("s02_po_01", 1), ("s02_sur_01", 2), ("s02_po_02", 1)],
}


def class_map(label: int, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """A random (3, size, size) uint8 map (u, v, strain) whose channel ``label`` is bright."""
    x = rng.integers(0, 120, size=(3, size, size), dtype=np.uint8)
    x[label] = rng.integers(150, 256, size=(size, size), dtype=np.uint8)
    return x


def write_flow_png(path: Path, uvs: np.ndarray) -> None:
    """Write a (3, H, W) u, v, strain map as the layout's PNG: R = u, G = v, B = strain (cv2 writes BGR)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = np.ascontiguousarray(np.asarray(uvs, dtype=np.uint8).transpose(1, 2, 0)[:, :, ::-1])
    assert cv2.imwrite(str(path), bgr), path


def image_path(root: Path, sub: str, clip: str) -> Path:
    return Path(root) / IMAGE_DIR / f"{sub}_{clip} .png"


def csv_row(source: str, sub: str, clip: str, label: int | str) -> str:
    return f"{source},{sub},{clip},{label},,{sub}_{clip}.jpg,"


def make_fake_megc2019(
    root: Path,
    subjects: dict[str, list[tuple[str, int]]] | None = None,
    size: int = 28,
    seed: int = 0,
) -> Path:
    """Write a tiny fake MEGC2019 composite tree under ``root`` and return ``root``.

    ``subjects`` maps ``source/subject_id`` to ``[(clip, label), ...]`` (default :data:`DEFAULT_SUBJECTS`).
    """
    root = Path(root)
    subjects = DEFAULT_SUBJECTS if subjects is None else subjects
    rng = np.random.default_rng(seed)
    lines = [CSV_HEADER]
    for key, clips in subjects.items():
        source, sub = key.split("/", 1)
        for clip, label in clips:
            lines.append(csv_row(source, sub, clip, label))
            write_flow_png(image_path(root, sub, clip), class_map(label, rng, size))
    (root / CSV_NAME).write_text("\n".join(lines) + "\n")
    return root


def make_flow_dataset(
    subjects: dict[str, list[int]] | None = None,
    size: int = 28,
    seed: int = 0,
    name: str = "fake",
) -> FlowDataset:
    """An in-memory ``FlowDataset``: ``subjects`` maps ``source/subject_id`` to its samples' labels."""
    if subjects is None:
        subjects = {k: [lab for _, lab in v] for k, v in DEFAULT_SUBJECTS.items()}
    rng = np.random.default_rng(seed)
    xs, ys, subs, sids, srcs, clips = [], [], [], [], [], []
    for key, labels in subjects.items():
        source, sid = key.split("/", 1)
        for j, label in enumerate(labels):
            xs.append(class_map(label, rng, size))
            ys.append(label)
            subs.append(key)
            sids.append(sid)
            srcs.append(source)
            clips.append(f"{sid}_clip{j:02d}")
    return FlowDataset(
        x=torch.from_numpy(np.stack(xs).astype(np.float32)),
        y=torch.tensor(ys, dtype=torch.int64),
        subjects=subs,
        subject_ids=sids,
        sources=srcs,
        clips=clips,
        class_names=COMPOSITE_CLASSES,
        name=name,
        info={"fake": True},
    )


def interrupt_on_call(real: Callable[..., Any], n: int) -> Callable[..., Any]:
    """``real`` wrapped so that its ``n``-th call raises KeyboardInterrupt (a user's Ctrl+C mid-run)."""
    calls = []

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return wrapped


def record_returns(real: Callable[..., Any], sink: list) -> Callable[..., Any]:
    """``real`` wrapped so that every value it returns is also appended to ``sink`` (a spy)."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        value = real(*args, **kwargs)
        sink.append(value)
        return value

    return wrapped


def spy_on_selection_training(monkeypatch: Any) -> list[torch.Tensor]:
    """Patch ``epir.engine.selection``'s ``fit`` and ``fit_many`` (every inner and outer training that goes through
    it) to record a copy of each training set's maps; returns the list they are appended to."""
    from epir.engine import selection

    trained: list[torch.Tensor] = []
    real_fit, real_many = selection.fit, selection.fit_many

    def spy_fit(model: Any, x: torch.Tensor, y: torch.Tensor, cfg: Any, **kw: Any) -> Any:
        trained.append(x.clone())
        return real_fit(model, x, y, cfg, **kw)

    def spy_many(model_cfg: Any, members: Any, cfg: Any, **kw: Any) -> Any:
        trained.extend(m.x.clone() for m in members)
        return real_many(model_cfg, members, cfg, **kw)

    monkeypatch.setattr(selection, "fit", spy_fit)
    monkeypatch.setattr(selection, "fit_many", spy_many)
    return trained


def shared_choices_in_workers(dataset: FlowDataset, cfg: Any) -> dict[str, tuple[int, dict[str, Any]]]:
    """``select_shared`` for every subject of ``dataset`` (run seed 0) in one process and with ``jobs=2``: asserts
    that the worker processes choose as one and score the same, and returns the one-process choices."""
    from epir.engine.selection import select_shared

    subjects = dataset.subject_list()
    one = select_shared(dataset, cfg, 0, subjects)
    two = select_shared(dataset, cfg, 0, subjects, jobs=2)
    for s in subjects:
        assert one[s][0] == two[s][0]
        np.testing.assert_allclose(two[s][1]["scores"], one[s][1]["scores"], atol=1e-6)
    return one


def run_predictions(n_subjects: int = 12, per_subject: int = 6, accuracy: float = 0.7, seeds: tuple[int, ...] = (0,),
                    rng_seed: int = 0) -> pd.DataFrame:
    """A run's predictions: subjects of two sources, ``per_subject`` samples each, about ``accuracy`` right."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    truth = rng.integers(0, 3, size=(n_subjects, per_subject))
    for seed in seeds:
        for s in range(n_subjects):
            source = "casme2" if s % 2 else "samm"
            for j in range(per_subject):
                true = int(truth[s, j])
                pred = true if rng.random() < accuracy else int((true + rng.integers(1, 3)) % 3)
                rows.append((seed, f"{source}/s{s:02d}", source, f"clip{j}", true, pred))
    return pd.DataFrame(rows, columns=["seed", "subject", "source", "clip", "true", "predicted"])


def with_probs(df: pd.DataFrame) -> pd.DataFrame:
    """Add one-hot ``prob_<class>`` columns (what predictions.csv holds)."""
    out = df.copy()
    out["subject_id"] = out["subject"].str.split("/").str[1]
    for k, name in enumerate(CLASSES):
        out[f"prob_{name}"] = (out["predicted"] == k).astype(float)
    return out


def write_run_dir(out: Path, predictions: pd.DataFrame) -> Path:
    """A finished honest run directory at ``out`` holding ``predictions`` (one-hot probabilities added): its
    ``results.json``, ``predictions.csv`` and MEGC2019 log, as ``epir evaluate`` reads them."""
    from epir.engine.results import HONEST, summarize, write_results  # noqa: PLC0415 (only the runs' tests need it)

    df = with_probs(predictions)
    out.mkdir(parents=True)
    write_results(out, summarize(df, CLASSES, HONEST), df)
    return out
