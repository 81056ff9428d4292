"""Ranking metrics (GAUC, user AUC, NDCG@k, logloss, partial sums) vs scikit-learn and by hand."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, ndcg_score, roc_auc_score

import shoal.metrics
from shoal.metrics import (
    BUCKET_NAMES,
    DEFAULT_KS,
    MetricSums,
    gauc,
    group_auc,
    ranking_metrics,
    ranking_sums,
)

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

KS = (1, 3, 5, 10)


def _random_requests(seed: int, n_users: int = 60) -> dict[str, np.ndarray]:
    """Random labelled candidates of complete users, shuffled, with many score ties.

    Users get sparse ids and a bucket in 0..2; each has 1-5 requests of 1-15 candidates with a
    user-specific click rate (some requests and users end up single-class) and a user-specific
    score quality (score = noise + quality * label, rounded). Request ids are global and sparse.
    ``probs`` lies in [0.01, 0.99] so scikit-learn's clipping never acts.
    """
    rng = np.random.default_rng(seed)
    users = rng.choice(10_000, size=n_users, replace=False)
    cols: dict[str, list] = {k: [] for k in ("scores", "labels", "request", "user", "bucket")}
    next_request = 0
    for u in users:
        b, ctr, quality = rng.integers(0, 3), rng.uniform(0.02, 0.5), rng.uniform(-0.5, 2.0)
        for _ in range(rng.integers(1, 6)):
            size = int(rng.integers(1, 16))
            labels = (rng.random(size) < ctr).astype(np.int64)
            cols["scores"].append(np.round(rng.normal(size=size) + quality * labels, 1))  # ties
            cols["labels"].append(labels)
            cols["request"].append(np.full(size, 7 * next_request + 3))
            cols["user"].append(np.full(size, u))
            cols["bucket"].append(np.full(size, b))
            next_request += 1
    data = {k: np.concatenate(v) for k, v in cols.items()}
    data["probs"] = rng.uniform(0.01, 0.99, size=data["scores"].size)
    perm = rng.permutation(data["scores"].size)
    return {k: v[perm] for k, v in data.items()}


def _args(d: dict[str, np.ndarray], m: np.ndarray | slice = slice(None)) -> tuple:
    return d["scores"][m], d["labels"][m], d["request"][m], d["user"][m], d["bucket"][m]


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


def _assert_same_metrics(a: dict, b: dict, atol: float = 1e-12) -> None:
    assert a.keys() == b.keys()
    for metric in a:
        assert a[metric].keys() == b[metric].keys()
        np.testing.assert_allclose(
            list(a[metric].values()), list(b[metric].values()), rtol=0, atol=atol, err_msg=metric
        )


def test_partial_sums_aggregate_exactly() -> None:
    d = _random_requests(6, n_users=80)
    pooled = ranking_metrics(*_args(d), probs=d["probs"], ks=KS)
    # devices hold complete users, of very different sizes
    users = np.unique(d["user"])
    device_of_user = np.random.default_rng(7).choice(
        5, size=users.size, p=[0.5, 0.2, 0.15, 0.1, 0.05]
    )
    device = device_of_user[np.searchsorted(users, d["user"])]
    parts = [
        ranking_sums(*_args(d, device == i), probs=d["probs"][device == i], ks=KS) for i in range(5)
    ]
    total = MetricSums.total(parts)
    _assert_same_metrics(total.finalize(), pooled)
    _assert_same_metrics(sum(parts[1:], parts[0]).finalize(), pooled)
    # through the message format too
    from_records = MetricSums.total(MetricSums.from_record(p.to_record(), ks=KS) for p in parts)
    _assert_same_metrics(from_records.finalize(), pooled)
    # an average of per-device averages is not the pooled value
    naive = np.mean([p.finalize()["gauc"]["all"] for p in parts])
    assert abs(naive - pooled["gauc"]["all"]) > 1e-3
    naive_uauc = np.mean([p.finalize()["uauc"]["all"] for p in parts])
    assert abs(naive_uauc - pooled["uauc"]["all"]) > 1e-3


def test_splitting_a_user_across_parts_breaks_user_auc() -> None:
    # user 0: positives 0.9 and 0.1, negative 0.5 -> UAUC 1/2. Split as {0.9, 0.5} | {0.1}:
    # the first part has AUC 1, the second is single-class -> summed UAUC 1 (wrong, by design).
    args = ([0.9, 0.5, 0.1], [1, 0, 1], [0, 0, 1], [0, 0, 0], [0, 0, 0])
    assert ranking_metrics(*args)["uauc"]["all"] == 0.5
    parts = [ranking_sums(*(np.asarray(a)[m] for a in args)) for m in (slice(0, 2), slice(2, 3))]
    assert MetricSums.total(parts).finalize()["uauc"]["all"] == 1.0


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


def test_empty_input_gives_zero_sums() -> None:
    s = ranking_sums([], [], [], [], [])
    assert all(v.tolist() == [0.0, 0.0, 0.0] for v in s.sums.values())
    m = s.finalize()
    for metric in ("impressions", "clicks", "requests", "users"):
        assert m[metric] == {"all": 0.0, "tail": 0.0, "torso": 0.0, "head": 0.0}
    for metric in ("gauc", "uauc", "ndcg@5", "ndcg@10", "logloss", "ctr"):
        assert all(math.isnan(v) for v in m[metric].values()), metric
    z = MetricSums.zeros()
    assert z.to_record() == s.to_record()
    assert z.buckets == BUCKET_NAMES and z.ks == DEFAULT_KS


def test_record_and_state_round_trip() -> None:
    d = _random_requests(10)
    bucket2 = (d["bucket"] > 0).astype(np.int64)
    s = ranking_sums(
        d["scores"],
        d["labels"],
        d["request"],
        d["user"],
        bucket2,
        d["probs"],
        ("low", "high"),
        (3,),
    )
    rec = s.to_record()
    assert "ndcg@3_sum/low" in rec and "gauc_num/high" in rec
    assert all(isinstance(k, str) and isinstance(v, float) for k, v in rec.items())
    back = MetricSums.from_record(rec, buckets=("low", "high"), ks=(3,))
    assert back.to_record() == rec
    _assert_same_metrics(back.finalize(), s.finalize(), atol=0)
    state = json.loads(json.dumps(s.state_dict()))
    loaded = MetricSums.zeros()
    loaded.load_state_dict(state)
    assert loaded.buckets == ("low", "high") and loaded.ks == (3,)
    assert loaded.to_record() == rec
    # the copy does not alias the original
    loaded.sums["clicks"][0] += 1
    assert s.to_record() == rec


def test_from_record_errors() -> None:
    rec = MetricSums.zeros().to_record()
    missing = dict(rec)
    del missing["uauc_sum/torso"]
    with pytest.raises(ValueError, match=r"missing keys \['uauc_sum/torso'\]"):
        MetricSums.from_record(missing)
    with pytest.raises(ValueError, match=r"unexpected keys \['bogus/tail'\]"):
        MetricSums.from_record({**rec, "bogus/tail": 1.0})
    with pytest.raises(ValueError, match="missing keys"):
        MetricSums.from_record(rec, ks=(5, 10, 20))  # layout mismatch
    with pytest.raises(ValueError, match=r"non-finite.*clicks/head"):
        MetricSums.from_record({**rec, "clicks/head": float("nan")})
    with pytest.raises(ValueError, match=r"non-finite.*clicks/head"):
        MetricSums.from_record({**rec, "clicks/head": "x"})


def test_add_and_total_errors() -> None:
    a = MetricSums.zeros()
    with pytest.raises(ValueError, match="different layouts"):
        _ = a + MetricSums.zeros(buckets=("tail", "head"))
    with pytest.raises(ValueError, match="different layouts"):
        _ = a + MetricSums.zeros(ks=(5,))
    with pytest.raises(TypeError):
        _ = a + 1
    with pytest.raises(ValueError, match="at least one part"):
        MetricSums.total([])


@pytest.mark.parametrize(
    ("buckets", "ks", "match"),
    [
        ((), (5,), "at least one bucket"),
        ("tail", (5,), "not the string"),
        (("all", "head"), (5,), "not 'all'"),
        (("a/b",), (5,), "without '/'"),
        (("a", "a"), (5,), "unique"),
        (("a",), (0,), "positive integers"),
        (("a",), (5, 5), "unique"),
    ],
)
def test_bad_layout_raises(buckets: tuple, ks: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MetricSums.zeros(buckets, ks)


def test_constructor_validates_sums() -> None:
    z = MetricSums.zeros()
    with pytest.raises(ValueError, match=r"missing statistics \['clicks'\]"):
        MetricSums(z.buckets, z.ks, {k: v for k, v in z.sums.items() if k != "clicks"})
    with pytest.raises(ValueError, match="shape"):
        MetricSums(z.buckets, z.ks, {**z.sums, "clicks": np.zeros(2)})


def _hand_args() -> list[np.ndarray]:
    return [
        np.array([0.9, 0.1, 0.5, 0.2]),
        np.array([1, 0, 0, 1]),
        np.array([0, 0, 1, 1]),
        np.array([7, 7, 8, 8]),
        np.array([0, 0, 2, 2]),
    ]


@pytest.mark.parametrize(
    ("position", "value", "match"),
    [
        (0, np.array([0.9, np.nan, 0.5, 0.2]), "NaN or inf"),
        (0, np.array([0.9, 0.1, np.inf, 0.2]), "NaN or inf"),
        (1, np.array([1, 0, 2, 1]), r"labels must be 0 or 1; found \[2\]"),
        (1, np.array([1.0, 0.5, 0.0, 1.0]), r"labels must be 0 or 1; found \[0.5\]"),
        (4, np.array([0, 1, 2, 2]), "constant within a user; user 7"),
        (4, np.array([0, 0, 3, 3]), r"out of range \[0, 3\)"),
        (4, np.array([0, 0, -1, -1]), "out of range"),
        (3, np.array([7.0, 7.0, 8.0, 8.0]), "user must hold integers"),
        (2, np.array([0, 0, 1]), "shapes differ"),
        (1, np.array([1, 0, 0]), "shapes differ"),
    ],
)
def test_bad_input_raises(position: int, value: np.ndarray, match: str) -> None:
    args = _hand_args()
    ranking_sums(*args)  # valid as given
    args[position] = value
    with pytest.raises(ValueError, match=match):
        ranking_sums(*args)


@pytest.mark.parametrize(
    "probs", [[0.1, 0.2, 1.5, 0.3], [0.1, -0.1, 0.5, 0.3], [0.1, np.nan, 0.5, 0.3]]
)
def test_bad_probs_raise(probs: list[float]) -> None:
    with pytest.raises(ValueError, match=r"probs must lie in \[0, 1\]"):
        ranking_sums(*_hand_args(), probs=np.array(probs))
    with pytest.raises(ValueError, match="shapes differ"):
        ranking_sums(*_hand_args(), probs=np.array(probs[:3]))


def test_docstring_examples_run() -> None:
    result = doctest.testmod(shoal.metrics, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0
