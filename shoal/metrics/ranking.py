"""Sorting core of the ranking metrics: per-group AUC (ties count half), NDCG@k, plain GAUC.

:func:`_rank` sorts samples by group and by score descending once; :func:`_auc` and
:func:`_ndcg` then read every group's metric off the sorted order, vectorized. Package
overview: :mod:`shoal.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


# --------------------------------------------------------------------------- sorting core
@dataclass(frozen=True)
class _Ranking:
    """Samples sorted by group, then by score descending, with tie blocks.

    ``N`` samples, ``G`` groups, ``T`` tie blocks (runs of equal score inside a group).
    """

    order: np.ndarray  # (N,) permutation: sorted position -> input index
    group: np.ndarray  # (N,) dense group code 0..G-1 of each sorted sample
    first: np.ndarray  # (G,) sorted position of each group's first sample
    size: np.ndarray  # (G,) samples per group, float64
    tie: np.ndarray  # (N,) tie block code 0..T-1 of each sorted sample
    tie_group: np.ndarray  # (T,) group code of each tie block
    tie_start: np.ndarray  # (T,) 0-based position of the block's first sample in its group
    tie_size: np.ndarray  # (T,) samples per tie block, float64


def _rank(
    keys: tuple[np.ndarray, ...], scores: np.ndarray, by_score: np.ndarray | None = None
) -> _Ranking:
    """Sort by ``keys`` (primary key first) and, inside a group, by ``scores`` descending.

    A group is a run of equal values of all ``keys``; scores must be finite. ``by_score``, the
    stable descending argsort of ``scores``, may be passed to share it between calls.
    """
    n = scores.size
    order = np.argsort(-scores, kind="stable") if by_score is None else by_score  # (N,)
    for key in reversed(keys):  # stable passes, least significant key first
        order = order[np.argsort(key[order], kind="stable")]
    new_group = np.zeros(n, bool)  # (N,)
    if n:
        new_group[0] = True
        for key in keys:
            k = key[order]
            new_group[1:] |= k[1:] != k[:-1]
    s = scores[order]  # (N,)
    new_tie = new_group.copy()  # (N,)
    new_tie[1:] |= s[1:] != s[:-1]
    group = np.cumsum(new_group) - 1  # (N,)
    first = np.flatnonzero(new_group)  # (G,)
    size = np.diff(np.r_[first, n]).astype(np.float64)  # (G,)
    pos = np.arange(n) - first[group]  # (N,) 0-based position inside the group
    tie = np.cumsum(new_tie) - 1  # (N,)
    tie_first = np.flatnonzero(new_tie)  # (T,)
    return _Ranking(
        order=order,
        group=group,
        first=first,
        size=size,
        tie=tie,
        tie_group=group[tie_first],
        tie_start=pos[tie_first].astype(np.float64),
        tie_size=np.diff(np.r_[tie_first, n]).astype(np.float64),
    )


def _auc(r: _Ranking, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mann-Whitney AUC of every group (ties count half).

    Parameters
    ----------
    r : _Ranking
    y : np.ndarray
        (N,) float64 0/1 labels in sorted order.

    Returns
    -------
    auc : np.ndarray
        (G,) AUC; meaningless where ``ok`` is False.
    ok : np.ndarray
        (G,) bool, the group has both classes.
    """
    g = r.size.size
    n_pos = np.bincount(r.group, weights=y, minlength=g)  # (G,)
    n_neg = r.size - n_pos  # (G,)
    # 1-based ascending rank of a tie block = mean ascending rank of the positions it covers
    block_rank = r.size[r.tie_group] - r.tie_start - (r.tie_size - 1.0) / 2.0  # (T,)
    rank_pos = np.bincount(r.group, weights=y * block_rank[r.tie], minlength=g)  # (G,)
    ok = (n_pos > 0) & (n_neg > 0)
    denom = np.where(ok, n_pos * n_neg, 1.0)
    auc = (rank_pos - n_pos * (n_pos + 1.0) / 2.0) / denom  # (G,)
    return auc, ok


def _ndcg(r: _Ranking, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """NDCG@k of every group with binary gains, ties averaged like scikit-learn.

    A tie block covering 0-based positions ``[a, a + c)`` contributes its gain sum times the
    mean discount ``1 / log2(p + 2)`` over those positions (discount 0 at ``p >= k``).

    Returns
    -------
    ndcg : np.ndarray
        (G,) NDCG@k; meaningless where ``ok`` is False.
    ok : np.ndarray
        (G,) bool, the group has a positive.
    """
    g = r.size.size
    cum = np.r_[0.0, np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))]  # (k+1,) discount prefix
    lo = np.minimum(r.tie_start, k).astype(np.int64)  # (T,)
    hi = np.minimum(r.tie_start + r.tie_size, k).astype(np.int64)  # (T,)
    gain = np.bincount(r.tie, weights=y, minlength=r.tie_size.size)  # (T,)
    dcg = np.bincount(r.tie_group, weights=gain * (cum[hi] - cum[lo]) / r.tie_size, minlength=g)
    n_pos = np.bincount(r.group, weights=y, minlength=g)  # (G,)
    ideal = cum[np.minimum(n_pos, k).astype(np.int64)]  # (G,)
    ok = n_pos > 0
    return dcg / np.where(ok, ideal, 1.0), ok


# --------------------------------------------------------------------------- plain GAUC
def group_auc(
    scores: np.ndarray, labels: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUC of every group.

    Parameters
    ----------
    scores : np.ndarray
        (N,) float predictions.
    labels : np.ndarray
        (N,) binary labels (any non-zero value counts as positive).
    groups : np.ndarray
        (N,) integer group ids.

    Returns
    -------
    group : np.ndarray
        (G,) ids of the groups that have both classes, ascending.
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
    r = _rank((groups,), scores)
    auc, ok = _auc(r, labels[r.order].astype(np.float64))
    return groups[r.order][r.first][ok], auc[ok], r.size[ok]


def gauc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Impression-weighted mean of per-group AUC (NaN if no group has both classes)."""
    _, auc, size = group_auc(scores, labels, groups)
    return float(np.average(auc, weights=size)) if auc.size else float("nan")
