"""MEGC2019 metrics: UF1 and UAR over predictions pooled across folds.

UF1 is the mean over classes of the per-class F1 = 2TP / (2TP + FP + FN); UAR is the mean over classes of
the per-class recall TP / N_c, with TP, FP, FN and N_c counted over all pooled predictions. A class absent
from the ground truth (N_c = 0) has no recall and an F1 that only its false positives decide; the
``absent`` policy says what happens to it, always with a warning:

- ``"skip"`` (default, as the MEGC2019 scoring scripts effectively do): leave the class out of both means;
- ``"zero"``: count it as 0 in both means.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from epir.errors import ConfigError

ABSENT_POLICIES = ("skip", "zero")


def _labels(name: str, values: Sequence[int], num_classes: int) -> np.ndarray:
    """``values`` as a 1-D int64 array of class indices 0..num_classes-1, or a ConfigError naming the first bad one
    (a label of 1.5 or NaN was cast to an index and scored).
    """
    a = np.asarray(values)
    if a.ndim != 1:
        raise ConfigError(f"{name} must be one class index per sample (1-D), got shape {a.shape}.")
    if a.size and a.dtype.kind not in "iuf":
        raise ConfigError(f"{name} must hold class indices 0..{num_classes - 1} (whole numbers), got {a.dtype} values "
                          f"such as {a[:3].tolist()}; map class names to their indices first.")
    if a.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(a) | (a != np.round(a)))
        if bad.size:
            raise ConfigError(f"{name}[{int(bad[0])}] = {float(a[bad[0]])} is not a whole-number class index "
                              f"0..{num_classes - 1}.")
    a = a.astype(np.int64)
    out = np.flatnonzero((a < 0) | (a >= num_classes))
    if out.size:
        raise ConfigError(f"{name}[{int(out[0])}] = {int(a[out[0]])} is outside the classes 0..{num_classes - 1} "
                          f"(labels present: {sorted(set(a.tolist()))}); check num_classes and the labels.")
    return a


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts, shape (num_classes, num_classes): row = true class, column = predicted class.

    Raises:
        ConfigError: labels of different lengths, not whole numbers, or outside ``0..num_classes-1``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ConfigError(f"num_classes must be a whole number >= 1, got {num_classes!r}.")
    t = _labels("y_true", y_true, num_classes)
    p = _labels("y_pred", y_pred, num_classes)
    if t.shape != p.shape:
        raise ConfigError(f"y_true has {len(t)} labels but y_pred {len(p)}; give one prediction per sample.")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def megc_scores(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    num_classes: int,
    absent: str = "skip",
    context: str = "",
) -> dict[str, Any]:
    """UF1, UAR and accuracy of pooled predictions, with per-class F1/recall and the confusion matrix.

    Args:
        y_true: true class indices, pooled over folds.
        y_pred: predicted class indices, same length.
        num_classes: number of classes (a class never seen in either still counts as absent).
        absent: policy for classes absent from the ground truth, ``"skip"`` or ``"zero"``.
        context: a label for the warning (e.g. ``"per_dataset[samm]"``).
    """
    if absent not in ABSENT_POLICIES:
        raise ConfigError(f"absent-class policy {absent!r} is not one of {ABSENT_POLICIES}.")
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    fp, fn = predicted - tp, support - tp
    present = support > 0
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    absent_classes = [int(c) for c in np.flatnonzero(~present)]
    if absent_classes:
        where = f" in {context}" if context else ""
        warnings.warn(
            f"class(es) {absent_classes} absent from the ground truth{where}: "
            f"{'left out of' if absent == 'skip' else 'counted as 0 in'} UF1 and UAR (absent-class policy "
            f"{absent!r}).",
            stacklevel=2,
        )
    keep = present if absent == "skip" else np.ones(num_classes, dtype=bool)
    n = int(cm.sum())
    return {
        "uf1": float(f1[keep].mean()) if keep.any() else float("nan"),
        "uar": float(recall[keep].mean()) if keep.any() else float("nan"),
        "accuracy": float(tp.sum() / n) if n else float("nan"),
        "n": n,
        "f1_per_class": f1.tolist(),
        "recall_per_class": recall.tolist(),
        "support": support.astype(int).tolist(),
        "absent_classes": absent_classes,
        "confusion": cm.tolist(),
    }
