"""MEGC2019 metrics: UF1/UAR against scikit-learn and against hand-worked confusion matrices."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from epir.engine.metrics import confusion_matrix, megc_scores
from epir.errors import ConfigError

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def labels_from_confusion(cm: list[list[int]]) -> tuple[list[int], list[int]]:
    """y_true, y_pred realising a confusion matrix (row = true, column = predicted)."""
    t, p = [], []
    for i, row in enumerate(cm):
        for j, count in enumerate(row):
            t += [i] * count
            p += [j] * count
    return t, p


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_matches_sklearn_macro_f1_and_recall(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(30, 200))
    y_true = rng.integers(0, k, n)
    y_true[:k] = np.arange(k)  # every class present
    # Predictions right about half the time, so the scores are neither 0 nor 1.
    y_pred = np.where(rng.random(n) < 0.5, y_true, rng.integers(0, k, n))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all classes present: no warning
        s = megc_scores(y_true, y_pred, k)
    labels = list(range(k))
    assert s["uf1"] == pytest.approx(
        sklearn_metrics.f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0), abs=1e-12
    )
    assert s["uar"] == pytest.approx(
        sklearn_metrics.recall_score(y_true, y_pred, average="macro", labels=labels, zero_division=0), abs=1e-12
    )
    assert s["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y_true, y_pred))
    assert np.array_equal(
        np.asarray(s["confusion"]), sklearn_metrics.confusion_matrix(y_true, y_pred, labels=labels)
    )
    assert s["n"] == n
    assert s["absent_classes"] == []


def test_hand_worked_3x3() -> None:
    # rows = true negative/positive/surprise, columns = predicted
    cm = [
        [5, 1, 0],  # 6 negatives: 5 right
        [2, 3, 1],  # 6 positives: 3 right
        [0, 1, 4],  # 5 surprises: 4 right
    ]
    # Column sums (predicted): 7, 5, 5.
    # class 0: TP 5, FP 7-5=2, FN 6-5=1 -> F1 = 10 / (10+2+1) = 10/13; recall 5/6
    # class 1: TP 3, FP 5-3=2, FN 6-3=3 -> F1 = 6 / (6+2+3) = 6/11;   recall 3/6
    # class 2: TP 4, FP 5-4=1, FN 5-4=1 -> F1 = 8 / (8+1+1) = 8/10;   recall 4/5
    t, p = labels_from_confusion(cm)
    s = megc_scores(t, p, 3)
    assert s["confusion"] == cm
    assert s["f1_per_class"] == pytest.approx([10 / 13, 6 / 11, 8 / 10])
    assert s["recall_per_class"] == pytest.approx([5 / 6, 3 / 6, 4 / 5])
    assert s["uf1"] == pytest.approx((10 / 13 + 6 / 11 + 8 / 10) / 3)
    assert s["uar"] == pytest.approx((5 / 6 + 3 / 6 + 4 / 5) / 3)
    assert s["accuracy"] == pytest.approx(12 / 17)
    assert s["support"] == [6, 6, 5]


def test_hand_worked_perfect_and_all_wrong() -> None:
    s = megc_scores([0, 1, 2, 2], [0, 1, 2, 2], 3)
    assert s["uf1"] == 1.0 and s["uar"] == 1.0
    # Every prediction shifted by one class: no true positive anywhere.
    s = megc_scores([0, 1, 2], [1, 2, 0], 3)
    assert s["uf1"] == 0.0 and s["uar"] == 0.0


def test_pooling_is_not_averaging_over_folds() -> None:
    # Two "folds" pooled: metrics come from summed counts, not from the mean of per-fold scores.
    t1, p1 = [0, 0, 1], [0, 0, 0]
    t2, p2 = [1, 2, 2], [1, 2, 1]
    pooled = megc_scores(t1 + t2, p1 + p2, 3)
    # pooled cm: [[2,0,0],[1,1,0],[0,1,1]]; F1: 4/5, 2/4, 2/3; recall 1, 1/2, 1/2
    assert pooled["uf1"] == pytest.approx((4 / 5 + 2 / 4 + 2 / 3) / 3)
    assert pooled["uar"] == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)


class TestAbsentClass:
    # class 2 never in the ground truth, but predicted once (a false positive)
    cm_t = [0, 0, 0, 1, 1, 1]
    cm_p = [0, 0, 1, 1, 1, 2]
    # class 0: TP 2, FP 0, FN 1 -> F1 4/5, recall 2/3
    # class 1: TP 2, FP 1, FN 1 -> F1 4/6, recall 2/3
    # class 2: TP 0, FP 1, FN 0 -> F1 0,   recall undefined (0 here)

    def test_skip_leaves_it_out_with_a_warning(self) -> None:
        with pytest.warns(UserWarning, match=r"absent from the ground truth.*left out"):
            s = megc_scores(self.cm_t, self.cm_p, 3, absent="skip")
        assert s["absent_classes"] == [2]
        assert s["uf1"] == pytest.approx((4 / 5 + 4 / 6) / 2)
        assert s["uar"] == pytest.approx((2 / 3 + 2 / 3) / 2)

    def test_zero_counts_it_as_zero_with_a_warning(self) -> None:
        with pytest.warns(UserWarning, match=r"absent from the ground truth.*counted as 0"):
            s = megc_scores(self.cm_t, self.cm_p, 3, absent="zero")
        assert s["absent_classes"] == [2]
        assert s["uf1"] == pytest.approx((4 / 5 + 4 / 6 + 0) / 3)
        assert s["uar"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)

    def test_default_is_skip(self) -> None:
        with pytest.warns(UserWarning):
            default = megc_scores(self.cm_t, self.cm_p, 3)
        with pytest.warns(UserWarning):
            skip = megc_scores(self.cm_t, self.cm_p, 3, absent="skip")
        assert default["uf1"] == skip["uf1"] and default["uar"] == skip["uar"]

    def test_class_never_seen_at_all_is_absent(self) -> None:
        with pytest.warns(UserWarning, match="per_dataset\\[smic\\]"):
            s = megc_scores([0, 1], [0, 1], 3, context="per_dataset[smic]")
        assert s["absent_classes"] == [2]
        assert s["uf1"] == 1.0 and s["uar"] == 1.0

    def test_invalid_policy_raises_config_error(self) -> None:
        with pytest.raises(ConfigError, match="ignore"):
            megc_scores([0, 1, 2], [0, 1, 2], 3, absent="ignore")


class TestConfusionMatrix:
    def test_counts(self) -> None:
        cm = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], 3)
        assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]

    @pytest.mark.parametrize(
        "y_true, y_pred",
        [([0, 1, 3], [0, 1, 2]), ([0, 1, 2], [0, 1, 3]), ([0, -1, 2], [0, 1, 2]), ([0, 1, 2], [-1, 1, 2])],
    )
    def test_rejects_out_of_range_labels(self, y_true, y_pred) -> None:
        with pytest.raises(ConfigError, match=r"outside the classes 0\.\.2"):
            confusion_matrix(y_true, y_pred, 3)

    def test_megc_scores_rejects_out_of_range_labels(self) -> None:
        with pytest.raises(ValueError):
            megc_scores([0, 1, 2], [0, 1, 3], 3)

    def test_rejects_length_mismatch(self) -> None:
        with pytest.raises(ValueError):
            confusion_matrix([0, 1], [0, 1, 2], 3)

    @pytest.mark.parametrize(
        "y_true, expected",
        [([0, 1.5, 2], r"y_true\[1\] = 1.5 is not a whole-number class index"),
         (np.array([0, np.nan, 2]), r"y_true\[1\] = nan is not a whole-number"),
         (["negative", "positive", "surprise"], "map class names to their indices"),
         ([[0, 1, 2]], "1-D")],
    )
    def test_rejects_labels_that_are_not_class_indices(self, y_true, expected) -> None:
        """A label of 1.5 was cast to 1 and scored; a NaN became a huge negative index."""
        with pytest.raises(ConfigError, match=expected):
            megc_scores(y_true, [0, 1, 2], 3)

    def test_whole_number_floats_are_labels(self) -> None:
        assert megc_scores(np.array([0.0, 1.0, 2.0]), [0, 1, 2], 3)["uf1"] == 1.0

    def test_rejects_num_classes_below_one(self) -> None:
        with pytest.raises(ConfigError, match="num_classes must be a whole number >= 1"):
            confusion_matrix([0], [0], 0)
