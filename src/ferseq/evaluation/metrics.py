"""The field's scores from confusion matrices: UAR, WAR, macro F1 and the per-class table.

Every score of the evaluation is computed here, from confusion matrices
(``[..., true, predicted]`` counts), so one person's, one fold's, all folds'
and thousands of bootstrap resamples' scores are the same arithmetic on arrays
of any leading shape:

- UAR (unweighted average recall): the mean of the per-class recalls;
- WAR (weighted average recall): the share of items right, i.e. accuracy;
- macro F1: the mean of the per-class F1 scores.

Means over classes take the classes present among the items' true labels (a
class with no item has no recall to average), as scikit-learn does with
``labels`` set to the classes present. A matrix without any item scores NaN.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

METRICS = ("uar", "war", "macro_f1")
METRIC_NAMES = {"uar": "UAR", "war": "WAR", "macro_f1": "macro F1"}


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C, C)`` counts of (true, predicted) class indices."""
    flat = np.bincount(np.asarray(y_true) * num_classes + np.asarray(y_pred), minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def grouped_confusion(groups: np.ndarray, n_groups: int, y_true: np.ndarray, y_pred: np.ndarray,
                      num_classes: int) -> np.ndarray:
    """``(G, C, C)``: one confusion matrix per group index in ``[0, n_groups)`` (e.g. per test person)."""
    c2 = num_classes * num_classes
    flat = np.bincount(np.asarray(groups) * c2 + np.asarray(y_true) * num_classes + np.asarray(y_pred),
                       minlength=n_groups * c2)
    return flat.reshape(n_groups, num_classes, num_classes)


def _mean_over_present(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    count = present.sum(axis=-1)
    total = np.where(present, values, 0.0).sum(axis=-1)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def margins(cm: np.ndarray) -> np.ndarray:
    """``(..., 3, C)``: the diagonal (items right), the row sums (support) and the column sums (predicted) of
    confusion matrices ``(..., C, C)``: all that :func:`scores` needs. Linear in ``cm``, so the margins of a
    pooled matrix are the sums of its parts' margins."""
    cm = np.asarray(cm, dtype=np.float64)
    return np.stack([np.diagonal(cm, axis1=-2, axis2=-1), cm.sum(axis=-1), cm.sum(axis=-2)], axis=-2)


def margin_scores(m: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`scores` from :func:`margins` ``(..., 3, C)``."""
    m = np.asarray(m, dtype=np.float64)
    right, support, predicted = m[..., 0, :], m[..., 1, :], m[..., 2, :]
    total = support.sum(axis=-1)
    present = support > 0
    recall = np.divide(right, support, out=np.zeros_like(right), where=present)
    f1 = np.divide(2 * right, support + predicted, out=np.zeros_like(right), where=(support + predicted) > 0)
    return {
        "uar": _mean_over_present(recall, present),
        "war": np.divide(right.sum(axis=-1), total, out=np.full(total.shape, np.nan), where=total > 0),
        "macro_f1": _mean_over_present(f1, present),
    }


def scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """``uar``, ``war`` and ``macro_f1`` (fractions) of confusion matrices ``(..., C, C)``; NaN without items."""
    return margin_scores(margins(cm))


def class_table(cm: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class, then ``macro avg`` (its recall is UAR) and ``accuracy``
    (its f1 is WAR): the shape of the reference's tables."""
    cm = np.asarray(cm, dtype=np.float64)
    right, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    precision = np.divide(right, predicted, out=np.zeros_like(right), where=predicted > 0)
    recall = np.divide(right, support, out=np.zeros_like(right), where=support > 0)
    f1 = np.divide(2 * right, support + predicted, out=np.zeros_like(right), where=(support + predicted) > 0)
    table = pd.DataFrame({"class": classes, "precision": precision, "recall": recall, "f1": f1,
                          "support": support.astype(np.int64)})
    present = support > 0
    mean = (lambda v: float(v[present].mean())) if present.any() else (lambda v: np.nan)
    n = int(support.sum())
    overall = scores(cm)
    rows = [{"class": "macro avg", "precision": mean(precision), "recall": mean(recall), "f1": mean(f1), "support": n},
            {"class": "accuracy", "precision": np.nan, "recall": np.nan, "f1": float(overall["war"]), "support": n}]
    return pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
