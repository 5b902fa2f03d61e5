"""Scores with 95% confidence intervals for held-out probe predictions.

Closed forms, so a sweep over every layer and method stays cheap: Wilson's interval for accuracy,
Hanley & McNeil's (1982) standard error for AUROC, Fisher's z for Pearson's r.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959964


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion correct / n."""
    if n == 0:
        return math.nan, math.nan
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def auroc(scores: np.ndarray, labels: np.ndarray, z: float = Z95) -> tuple[float, float, float]:
    """(AUROC, low, high): ties count half; interval from Hanley & McNeil's standard error."""
    from scipy.stats import rankdata

    labels = np.asarray(labels).astype(bool)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    if n1 == 0 or n0 == 0:
        return math.nan, math.nan, math.nan
    ranks = rankdata(scores)
    a = (ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = math.sqrt(max(a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a), 0.0) / (n1 * n0))
    return float(a), max(0.0, a - z * se), min(1.0, a + z * se)


def classification_scores(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy (decision > 0) and AUROC, each with its 95% interval, and F1 of label 1 (0 when no row is
    predicted or labelled 1, as scikit-learn's `f1_score(zero_division=0)`)."""
    predicted = (scores > 0).astype(int)
    correct = int((predicted == labels).sum())
    lo, hi = wilson(correct, len(labels))
    auc, auc_lo, auc_hi = auroc(scores, labels)
    hits = int(((predicted == 1) & (labels == 1)).sum())
    misses = int((predicted != labels).sum())  # false positives + false negatives
    return {"accuracy": correct / len(labels), "accuracy_lo": lo, "accuracy_hi": hi,
            "auroc": auc, "auroc_lo": auc_lo, "auroc_hi": auc_hi,
            "f1": 2 * hits / (2 * hits + misses) if hits else 0.0}


def regression_scores(pred: np.ndarray, target: np.ndarray, z: float = Z95) -> dict[str, float]:
    """R^2 of the predictions and Pearson's r with its Fisher-z interval."""
    resid = ((target - pred) ** 2).sum()
    total = ((target - target.mean()) ** 2).sum()
    r = float(np.corrcoef(pred, target)[0, 1]) if np.std(pred) > 0 else 0.0
    half = z / math.sqrt(max(len(target) - 3, 1))
    zr = math.atanh(max(min(r, 1 - 1e-12), -1 + 1e-12))
    return {"r2": float(1 - resid / total), "pearson": r,
            "pearson_lo": math.tanh(zr - half), "pearson_hi": math.tanh(zr + half)}
