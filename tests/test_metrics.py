"""Ranking metrics (GAUC, user AUC, NDCG@k, logloss, per-bucket values) vs scikit-learn and by
hand. The additive sums (``MetricSums``: exact aggregation, records, validation) are tested in
``test_metric_sums.py``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _metric_helpers import KS, _args, _assert_same_metrics, _random_requests
from sklearn.metrics import log_loss, ndcg_score, roc_auc_score

from shoal.metrics import BUCKET_NAMES, gauc, group_auc, ranking_metrics

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


# --------------------------------------------------------------------------- ranking metrics
# Slow, obviously-correct references (Python loops over groups, scikit-learn per group) against
# the vectorized ranking_sums / MetricSums.


def _ref_groups(keys: np.ndarray) -> list[np.ndarray]:
    """Boolean masks of the distinct rows of ``keys`` (N, K)."""
    return [np.all(keys == row, axis=1) for row in np.unique(keys, axis=0)]


def _ref_metrics(d: dict[str, np.ndarray], k: int) -> dict[str, float]:
    """Reference GAUC, UAUC, NDCG@k, logloss with scikit-learn, one group at a time."""
    s, y, p = d["scores"], d["labels"], d["probs"]
    req_auc, req_size, ndcg = [], [], []
    for m in _ref_groups(np.c_[d["user"], d["request"]]):
        if 0 < y[m].sum() < m.sum():
            req_auc.append(roc_auc_score(y[m], s[m]))
            req_size.append(m.sum())
        if y[m].sum() > 0:
            # sklearn refuses a single document; its NDCG is 1 (one positive, at the top)
            ndcg.append(ndcg_score([y[m]], [s[m]], k=k) if m.sum() > 1 else 1.0)
    user_auc = [
        roc_auc_score(y[m], s[m])
        for m in _ref_groups(d["user"][:, None])
        if 0 < y[m].sum() < m.sum()
    ]
    nan = float("nan")
    return {
        "gauc": float(np.average(req_auc, weights=req_size)) if req_auc else nan,
        "requests": float(len(req_auc)),
        "uauc": float(np.mean(user_auc)) if user_auc else nan,
        "users": float(len(user_auc)),
        f"ndcg@{k}": float(np.mean(ndcg)) if ndcg else nan,
        "logloss": float(log_loss(y, p, labels=[0, 1])) if y.size else nan,
        "impressions": float(y.size),
        "clicks": float(y.sum()),
    }


def test_request_auc_and_gauc_match_sklearn() -> None:
    d = _random_requests(0)
    # per-request AUC (request ids are globally unique here)
    g, auc, size = group_auc(d["scores"], d["labels"], d["request"])
    expect = {}
    for r in np.unique(d["request"]):
        m = d["request"] == r
        if 0 < d["labels"][m].sum() < m.sum():
            expect[r] = (roc_auc_score(d["labels"][m], d["scores"][m]), m.sum())
    assert g.tolist() == sorted(expect)
    np.testing.assert_allclose(auc, [expect[r][0] for r in g], rtol=0, atol=1e-12)
    assert size.tolist() == [expect[r][1] for r in g]

    got = ranking_metrics(*_args(d), probs=d["probs"])
    ref = _ref_metrics(d, 5)
    n_requests = np.unique(d["request"]).size
    assert 20 < ref["requests"] < n_requests  # single-class requests exist and are skipped
    assert got["requests"]["all"] == ref["requests"]
    assert got["gauc"]["all"] == pytest.approx(ref["gauc"], abs=1e-12)
    assert got["gauc"]["all"] == pytest.approx(gauc(d["scores"], d["labels"], d["request"]))


def test_user_auc_matches_sklearn() -> None:
    d = _random_requests(1)
    got = ranking_metrics(*_args(d), probs=d["probs"])
    ref = _ref_metrics(d, 5)
    assert 10 < ref["users"] < np.unique(d["user"]).size  # single-class users are skipped
    assert got["users"]["all"] == ref["users"]
    assert got["uauc"]["all"] == pytest.approx(ref["uauc"], abs=1e-12)
    # pooled per user, unweighted: differs from the impression-weighted per-request GAUC
    assert got["uauc"]["all"] != pytest.approx(got["gauc"]["all"], abs=1e-3)


@pytest.mark.parametrize("k", KS)
def test_ndcg_matches_sklearn_with_ties(k: int) -> None:
    d = _random_requests(2)
    got = ranking_metrics(*_args(d), probs=d["probs"], ks=KS)
    ref = _ref_metrics(d, k)
    assert got[f"ndcg@{k}"]["all"] == pytest.approx(ref[f"ndcg@{k}"], abs=1e-12)


def test_ndcg_hand_computed_with_ties() -> None:
    # scores 0.9, 0.5, 0.5, 0.1 with labels 0, 1, 0, 1; discounts d_p = 1 / log2(p + 2):
    # d0 = 1, d1 = 1/log2(3) = 0.63093, d2 = 1/log2(4) = 0.5, d3 = 1/log2(5) = 0.43068.
    # The tied pair occupies positions 1 and 2 and holds one positive: gain 1 x mean discount.
    # k=2 (d2 cut to 0): DCG = (d1 + 0)/2 = 0.31546, IDCG = d0 + d1 = 1.63093 -> 0.19343.
    # k=10: DCG = (d1 + d2)/2 + d3 = 0.99614, IDCG = 1.63093 -> 0.61078.
    # Second request: one candidate, a positive -> NDCG 1. Third: no positive -> skipped.
    d1, d2, d3 = 1 / math.log2(3), 0.5, 1 / math.log2(5)
    m = ranking_metrics(
        [0.9, 0.5, 0.5, 0.1, 0.3, 0.2, 0.8],
        [0, 1, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 2, 2],
        [4, 4, 4, 4, 4, 4, 4],
        [1, 1, 1, 1, 1, 1, 1],
        ks=(2, 10),
    )
    assert m["ndcg@2"]["all"] == pytest.approx((d1 / 2 / (1 + d1) + 1) / 2, abs=1e-15)
    assert m["ndcg@10"]["all"] == pytest.approx(
        (((d1 + d2) / 2 + d3) / (1 + d1) + 1) / 2, abs=1e-15
    )
    assert (d1 / 2) / (1 + d1) == pytest.approx(0.19342640361727, abs=1e-13)  # golden
    assert m["ndcg@2"]["torso"] == m["ndcg@2"]["all"]
    assert math.isnan(m["ndcg@2"]["tail"]) and math.isnan(m["ndcg@2"]["head"])


def test_logloss_matches_sklearn_and_clips() -> None:
    d = _random_requests(3)
    got = ranking_metrics(*_args(d), probs=d["probs"])
    assert got["logloss"]["all"] == pytest.approx(log_loss(d["labels"], d["probs"]), abs=1e-12)
    # default probabilities are sigmoid(scores)
    sig = 1 / (1 + np.exp(-d["scores"]))
    assert ranking_metrics(*_args(d))["logloss"]["all"] == pytest.approx(
        log_loss(d["labels"], sig), abs=1e-12
    )
    # clipping to [1e-7, 1 - 1e-7]: a confident miss costs -log(1e-7) each, a hit -log(1 - 1e-7)
    # (rel 1e-9: 1 - 1e-7 is not exact in float64, so -log(1 - (1 - 1e-7)) is off by ~1e-10)
    m = ranking_metrics([0.0] * 4, [1, 0, 1, 0], [0] * 4, [0] * 4, [0] * 4, probs=[0, 1, 1, 0])
    assert m["logloss"]["all"] == pytest.approx(
        (2 * -math.log(1e-7) + 2 * -math.log1p(-1e-7)) / 4, rel=1e-9
    )
    # sigmoid of extreme scores does not overflow
    m = ranking_metrics([-800.0, 800.0], [0, 1], [0, 0], [0, 0], [0, 0])
    assert m["logloss"]["all"] == pytest.approx(-math.log1p(-1e-7), rel=1e-9)


def test_counts_and_ctr() -> None:
    d = _random_requests(4)
    m = ranking_metrics(*_args(d))
    assert m["impressions"]["all"] == d["labels"].size
    assert m["clicks"]["all"] == d["labels"].sum()
    assert m["ctr"]["all"] == pytest.approx(d["labels"].mean(), abs=1e-15)


def test_per_bucket_values_equal_each_bucket_alone() -> None:
    d = _random_requests(5)
    got = ranking_metrics(*_args(d), probs=d["probs"], ks=KS)
    assert set(np.unique(d["bucket"])) == {0, 1, 2}
    for i, name in enumerate(BUCKET_NAMES):
        sub = d["bucket"] == i
        alone = ranking_metrics(*_args(d, sub), probs=d["probs"][sub], ks=KS)
        ref = _ref_metrics({k: v[sub] for k, v in d.items()}, 5)
        for metric, v in got.items():
            assert v[name] == pytest.approx(alone[metric]["all"], abs=1e-12), (metric, name)
        for metric in ("gauc", "uauc", "ndcg@5", "logloss", "requests", "users", "clicks"):
            assert got[metric][name] == pytest.approx(ref[metric], abs=1e-12), (metric, name)
    # counts add up over buckets
    for metric in ("impressions", "clicks", "requests", "users"):
        assert sum(got[metric][b] for b in BUCKET_NAMES) == got[metric]["all"]


def test_input_order_does_not_matter_and_requests_are_per_user() -> None:
    d = _random_requests(8)
    base = ranking_metrics(*_args(d), probs=d["probs"])
    perm = np.random.default_rng(9).permutation(d["scores"].size)
    _assert_same_metrics(ranking_metrics(*_args(d, perm), probs=d["probs"][perm]), base)
    # request ids local to each user (0, 1, ... within a user) give the same requests
    local = np.zeros_like(d["request"])
    for u in np.unique(d["user"]):
        m = d["user"] == u
        local[m] = np.unique(d["request"][m], return_inverse=True)[1]
    d2 = {**d, "request": local}
    _assert_same_metrics(ranking_metrics(*_args(d2), probs=d["probs"]), base)


def test_hand_computed_buckets() -> None:
    # user 1 (tail): request 0 = scores 0.9+, 0.1- -> AUC 1 (2 impressions);
    #                request 1 = 0.5-, 0.2+ -> AUC 0 (2 impressions); user AUC 3/4.
    # user 2 (head): request 0 = 0.3+, 0.3-, 0.6- -> AUC (0.5 + 0) / 2 = 0.25 (3 impressions);
    #                user AUC 0.25. Torso is empty.
    # GAUC all = (2*1 + 2*0 + 3*0.25) / 7 = 2.75 / 7; UAUC all = (0.75 + 0.25) / 2 = 0.5.
    m = ranking_metrics(
        [0.9, 0.1, 0.5, 0.2, 0.3, 0.3, 0.6],
        [1, 0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 2, 2, 2],
        [0, 0, 0, 0, 2, 2, 2],
    )
    assert m["gauc"]["all"] == pytest.approx(2.75 / 7, abs=1e-15)
    assert m["gauc"]["tail"] == 0.5 and m["gauc"]["head"] == 0.25
    assert m["uauc"]["all"] == 0.5 and m["uauc"]["tail"] == 0.75 and m["uauc"]["head"] == 0.25
    assert m["requests"] == {"all": 3.0, "tail": 2.0, "torso": 0.0, "head": 1.0}
    assert m["users"] == {"all": 2.0, "tail": 1.0, "torso": 0.0, "head": 1.0}
    assert m["ctr"]["all"] == pytest.approx(3 / 7) and m["ctr"]["head"] == pytest.approx(1 / 3)
    for metric in ("gauc", "uauc", "ndcg@5", "ndcg@10", "logloss", "ctr"):
        assert math.isnan(m[metric]["torso"]), metric
    assert list(m) == [
        "gauc", "uauc", "ndcg@5", "ndcg@10", "logloss",
        "impressions", "clicks", "ctr", "requests", "users",
    ]  # fmt: skip
