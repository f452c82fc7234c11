"""Arithmetic shared by scorers and explainers (SAGE's selection): AUROC, balanced accuracy, Pearson r."""

from __future__ import annotations

import numpy as np


def auroc(scores: np.ndarray | list[float], labels: np.ndarray | list[bool]) -> float | None:
    """Area under the ROC curve (ties count half; the Mann–Whitney U statistic); None without both classes."""
    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def balanced_accuracy(predicted: list[bool], truth: list[bool]) -> float | None:
    p, t = np.asarray(predicted, bool), np.asarray(truth, bool)
    if t.all() or (~t).all():
        return None
    return float(((p & t).sum() / t.sum() + (~p & ~t).sum() / (~t).sum()) / 2)


def pearson(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> float | None:
    """Pearson r; None when either side is constant (r is undefined there, not 0)."""
    a, b = np.asarray(x, float), np.asarray(y, float)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])
