"""Per-group AUC and impression-weighted GAUC against scikit-learn and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from shoal.metrics import gauc, group_auc

# Group 7: positives 0.35, 0.8 vs negatives 0.1, 0.4 -> wins 0.35>0.1, 0.8>0.1, 0.8>0.4 = 3/4.
# Group 2: positive 0.5 vs negatives 0.7 (loss), 0.5 (tie, 1/2) -> 0.5/2 = 0.25.
# Group 5: labels all 1 -> skipped.
HAND_SCORES = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.5, 0.5, 0.3, 0.9])
HAND_LABELS = np.array([0, 0, 1, 1, 0, 1, 0, 1, 1])
HAND_GROUPS = np.array([7, 7, 7, 7, 2, 2, 2, 5, 5])


def test_hand_computed_single_group() -> None:
    g, auc, size = group_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]), np.zeros(4))
    assert g.tolist() == [0]
    assert auc.tolist() == [0.75]
    assert size.tolist() == [4]


def test_hand_computed_groups_and_impression_weighting() -> None:
    g, auc, size = group_auc(HAND_SCORES, HAND_LABELS, HAND_GROUPS)
    assert g.tolist() == [2, 7]  # sorted ids, single-class group 5 left out
    np.testing.assert_allclose(auc, [0.25, 0.75])
    assert size.tolist() == [3, 4]
    # (3 * 0.25 + 4 * 0.75) / 7 = 3.75 / 7; group 5 carries no weight
    assert gauc(HAND_SCORES, HAND_LABELS, HAND_GROUPS) == pytest.approx(3.75 / 7)
    # an unweighted mean would be 0.5
    assert gauc(HAND_SCORES, HAND_LABELS, HAND_GROUPS) != pytest.approx(0.5)


def test_input_order_does_not_matter() -> None:
    perm = np.random.default_rng(3).permutation(HAND_SCORES.size)
    g, auc, size = group_auc(HAND_SCORES[perm], HAND_LABELS[perm], HAND_GROUPS[perm])
    assert g.tolist() == [2, 7]
    np.testing.assert_allclose(auc, [0.25, 0.75])
    assert size.tolist() == [3, 4]


def test_all_ties_give_half_and_perfect_and_inverted_rankings() -> None:
    g, auc, _ = group_auc(
        np.array([0.3, 0.3, 0.3, 1.0, 2.0, 3.0, 3.0, 2.0, 1.0]),
        np.array([1, 0, 0, 0, 1, 1, 0, 0, 1]),
        np.array([0, 0, 0, 1, 1, 1, 2, 2, 2]),
    )
    assert g.tolist() == [0, 1, 2]
    # group 0: one tie block -> 0.5; group 1: positives 2, 3 above negative 1 -> 1.0;
    # group 2: positive 1 below negatives 3, 2 -> 0.0
    np.testing.assert_allclose(auc, [0.5, 1.0, 0.0])


def test_matches_sklearn_on_random_data_with_ties() -> None:
    rng = np.random.default_rng(0)
    sizes = [1, 2, 3, 5, 8, 13, 40, 100, 250]
    groups = np.repeat(np.arange(len(sizes)) * 3 + 1, sizes)  # ids 1, 4, 7, ...
    n = groups.size
    scores = np.round(rng.random(n), 1)  # 11 distinct values: many ties
    labels = (rng.random(n) < 0.3).astype(np.int64)
    # force two larger single-class groups (all negative, all positive)
    labels[groups == 13] = 0
    labels[groups == 16] = 1
    perm = rng.permutation(n)
    scores, labels, groups = scores[perm], labels[perm], groups[perm]

    g, auc, size = group_auc(scores, labels, groups)
    expect_g, expect_auc, expect_size = [], [], []
    for gid in np.unique(groups):
        m = groups == gid
        if labels[m].min() == labels[m].max():
            continue
        expect_g.append(gid)
        expect_auc.append(roc_auc_score(labels[m], scores[m]))
        expect_size.append(m.sum())
    assert 13 not in g and 16 not in g and 1 not in g  # single-class groups skipped
    assert len(expect_g) >= 5
    assert g.tolist() == expect_g
    np.testing.assert_allclose(auc, expect_auc, rtol=0, atol=1e-12)
    assert size.tolist() == expect_size
    assert gauc(scores, labels, groups) == pytest.approx(
        np.average(expect_auc, weights=expect_size), abs=1e-12
    )


def test_float_and_bool_labels_are_accepted() -> None:
    base = gauc(HAND_SCORES, HAND_LABELS, HAND_GROUPS)
    assert gauc(HAND_SCORES, HAND_LABELS.astype(np.float32), HAND_GROUPS) == base
    assert gauc(HAND_SCORES, HAND_LABELS.astype(bool), HAND_GROUPS) == base
    assert gauc(HAND_SCORES.tolist(), HAND_LABELS.tolist(), HAND_GROUPS.tolist()) == base


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_score_raises(bad: float) -> None:
    scores = HAND_SCORES.copy()
    scores[2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        group_auc(scores, HAND_LABELS, HAND_GROUPS)
    with pytest.raises(ValueError, match="NaN or inf"):
        gauc(scores, HAND_LABELS, HAND_GROUPS)


@pytest.mark.parametrize(("n_scores", "n_labels", "n_groups"), [(9, 8, 9), (9, 9, 10), (3, 9, 9)])
def test_shape_mismatch_raises(n_scores: int, n_labels: int, n_groups: int) -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        group_auc(HAND_SCORES[:n_scores], HAND_LABELS[:n_labels], np.zeros(n_groups, int))
    with pytest.raises(ValueError, match="shapes differ"):
        gauc(HAND_SCORES[:n_scores], HAND_LABELS[:n_labels], np.zeros(n_groups, int))


def test_all_single_class_groups_give_nan() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.4])
    labels = np.array([1, 1, 0, 0])
    groups = np.array([0, 0, 1, 1])
    g, auc, size = group_auc(scores, labels, groups)
    assert g.size == auc.size == size.size == 0
    assert math.isnan(gauc(scores, labels, groups))


def test_empty_input_gives_nan() -> None:
    empty = np.zeros(0)
    g, auc, _ = group_auc(empty, empty, empty.astype(int))
    assert g.size == 0 and auc.size == 0
    assert math.isnan(gauc(empty, empty, empty.astype(int)))
