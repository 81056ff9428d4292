"""Ranking metrics shared by every part of Shoal.

GAUC is the AUC inside each group (a rerank request, or a user), averaged with impression
weights (the group's number of labelled candidates); groups whose labels are all one class are
skipped. AUC counts ties as half (the Mann-Whitney statistic), matching scikit-learn.
"""

from __future__ import annotations

import numpy as np


def group_auc(
    scores: np.ndarray, labels: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUC of every group.

    Parameters
    ----------
    scores : np.ndarray
        (N,) float predictions.
    labels : np.ndarray
        (N,) binary labels.
    groups : np.ndarray
        (N,) integer group ids.

    Returns
    -------
    group : np.ndarray
        (G,) ids of the groups that have both classes.
    auc : np.ndarray
        (G,) their AUC.
    size : np.ndarray
        (G,) their number of items (impressions).
    """
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    groups = np.asarray(groups).ravel()
    if not (scores.shape == labels.shape == groups.shape):
        raise ValueError(f"shapes differ: {scores.shape}, {labels.shape}, {groups.shape}")
    if scores.size and not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or inf")
    order = np.lexsort((scores, groups))
    g, s, y = groups[order], scores[order], labels[order]
    n = g.size
    new_group = np.r_[True, g[1:] != g[:-1]] if n else np.zeros(0, bool)
    gstart = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    rank = np.arange(n) - gstart + 1.0  # 1-based rank within group
    # average the ranks of ties (same group and score)
    new_tie = np.r_[True, (g[1:] != g[:-1]) | (s[1:] != s[:-1])] if n else new_group
    tie_id = np.cumsum(new_tie) - 1
    tie_sum = np.bincount(tie_id, weights=rank)
    tie_cnt = np.bincount(tie_id)
    rank = (tie_sum / tie_cnt)[tie_id]
    gid = np.cumsum(new_group) - 1
    n_pos = np.bincount(gid, weights=y)
    n_all = np.bincount(gid).astype(np.float64)
    n_neg = n_all - n_pos
    r_pos = np.bincount(gid, weights=rank * y)
    ok = (n_pos > 0) & (n_neg > 0)
    auc = (r_pos[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2) / (n_pos[ok] * n_neg[ok])
    return g[new_group][ok], auc, n_all[ok]


def gauc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Impression-weighted mean of per-group AUC (NaN if no group has both classes)."""
    _, auc, size = group_auc(scores, labels, groups)
    return float(np.average(auc, weights=size)) if auc.size else float("nan")
