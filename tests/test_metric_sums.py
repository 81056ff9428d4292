"""Additive metric sums (``MetricSums``, ``ranking_sums``): exact aggregation over parts of
complete users, records and state, input and layout validation, the docstring examples."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
from _metric_helpers import KS, _args, _assert_same_metrics, _random_requests

import shoal.metrics
import shoal.metrics.ranking
import shoal.metrics.sums
from shoal.metrics import BUCKET_NAMES, DEFAULT_KS, MetricSums, ranking_metrics, ranking_sums


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
    # the package re-exports its functions; their docstrings live in the submodules
    modules = (shoal.metrics, shoal.metrics.ranking, shoal.metrics.sums)
    results = [doctest.testmod(m, raise_on_error=False) for m in modules]
    assert sum(r.attempted for r in results) > 0 and all(r.failed == 0 for r in results)
