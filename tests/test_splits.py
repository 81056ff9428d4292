"""Per-user time splits (floor rule, then the page rule), device partitions, activity buckets."""

from __future__ import annotations

import numpy as np
import pytest
from _builders import split_log

from shoal.config import ActivityConfig, SimConfig, SplitConfig
from shoal.datasets.requests import RequestLog
from shoal.datasets.simulator import Simulator
from shoal.datasets.splits import (
    CLOUD,
    DEVICE,
    SPLITS,
    TEST,
    Partitions,
    activity_buckets,
    assign_splits,
)

C, D, T = CLOUD, DEVICE, TEST
COUNTS = [1, 2, 3, 5, 10]
# floor rule with (0.5, 0.3, 0.2): cloud if r < floor(0.5 n), device if r < floor(0.8 n)
#   n=1: cuts 0, 0 -> T          n=2: cuts 1, 1 -> C T        n=3: cuts 1, 2 -> C D T
#   n=5: cuts 2, 4 -> C C D D T  n=10: cuts 5, 8 -> 5 C, 3 D, 2 T
FLOOR_EXPECTED = [
    [T],
    [C, T],
    [C, D, T],
    [C, C, D, D, T],
    [C] * 5 + [D] * 3 + [T] * 2,
]


def _own_slates(counts: list[int]) -> RequestLog:
    """User u has counts[u] requests at times 100 u + 0, 1, ..., each on its own slate."""
    users = np.repeat(np.arange(len(counts)), counts)
    times = np.concatenate([100.0 * u + np.arange(n) for u, n in enumerate(counts)])
    return split_log(users.tolist(), times.tolist(), list(range(users.size)), len(counts))


@pytest.fixture(scope="module")
def sim_log() -> RequestLog:
    return Simulator(SimConfig(users=200, items=3000), seed=1).generate()


# ================================================================================ floor rule
def test_floor_rule_one_slate_per_request() -> None:
    log = _own_slates(COUNTS)
    split = assign_splits(log, SplitConfig())
    assert split.dtype == np.int8
    assert split.tolist() == [s for user in FLOOR_EXPECTED for s in user]


def test_floor_rule_other_fractions() -> None:
    log = _own_slates([10, 4])
    # (0.7, 0.2, 0.1): n=10 cuts 7, 9 (0.7 + 0.2 is 0.8999... in floating point);
    # n=4 cuts floor(2.8)=2, floor(3.6)=3
    split = assign_splits(log, SplitConfig(0.7, 0.2, 0.1))
    assert split.tolist() == [C] * 7 + [D] * 2 + [T] + [C, C, D, T]
    # (0, 0, 1): everything is test
    assert assign_splits(log, SplitConfig(0.0, 0.0, 1.0)).tolist() == [T] * 14
    # (0, 0.5, 0.5): n=10 cuts 0, 5; n=4 cuts 0, 2
    split = assign_splits(log, SplitConfig(0.0, 0.5, 0.5))
    assert split.tolist() == [D] * 5 + [T] * 5 + [D, D, T, T]


def test_floor_rule_orders_by_time_then_index() -> None:
    # user 0's requests are stored out of time order; user 1 has two requests at the same time
    log = split_log([0, 0, 0, 1, 1], [30.0, 10.0, 20.0, 5.0, 5.0], [0, 1, 2, 3, 4], 2)
    # user 0 by time: idx 1 (C), idx 2 (D), idx 0 (T); user 1: idx 3 (C), idx 4 (T)
    assert assign_splits(log, SplitConfig()).tolist() == [T, C, D, C, T]


def test_users_without_requests_are_ignored() -> None:
    log = split_log([1, 1, 3], [0.0, 1.0, 2.0], [0, 1, 2], 5)
    assert assign_splits(log, SplitConfig()).tolist() == [C, T, T]


# ================================================================================= page rule
def test_page_rule_moves_whole_slate_to_its_last_split() -> None:
    # user 0, 5 requests on slates [0, 0, 0, 1, 1]: floor C C D D T;
    #   slate 0 (C, C, D) -> D; slate 1 (D, T) -> T
    # user 1, 10 requests on slates [2, 2, 2, 2, 3, 3, 4, 4, 4, 4]: floor 5 C, 3 D, 2 T;
    #   slate 2 ranks 0-3 -> C; slate 3 ranks 4, 5 (C, D) -> D; slate 4 ranks 6-9 -> T
    # user 2, 3 requests on one slate: floor C D T -> all T
    # user 3, 5 requests on slates [6, 6, 7, 7, 8]: floor C C D D T, no slate crosses a cut
    users = [0] * 5 + [1] * 10 + [2] * 3 + [3] * 5
    times = list(range(5)) + list(range(10)) + list(range(3)) + list(range(5))
    slates = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 4, 4, 4, 4, 5, 5, 5, 6, 6, 7, 7, 8]
    log = split_log(users, [float(t) for t in times], slates, 4)
    split = assign_splits(log, SplitConfig())
    assert split.tolist() == [
        *[D, D, D, T, T],
        *[C, C, C, C, D, D, T, T, T, T],
        *[T, T, T],
        *[C, C, D, D, T],
    ]


def test_page_rule_with_requests_out_of_index_order() -> None:
    # user 0: times 3, 1, 2, 0 on slates 0, 1, 1, 0. By time: idx 3 (t0, slate 0, C),
    # idx 1 (t1, slate 1, C), idx 2 (t2, slate 1, D), idx 0 (t3, slate 0, T).
    # Slate 0 -> T, slate 1 -> D.
    log = split_log([0, 0, 0, 0], [3.0, 1.0, 2.0, 0.0], [0, 1, 1, 0], 1)
    assert assign_splits(log, SplitConfig()).tolist() == [T, D, D, T]


# ========================================================================= simulated property
def test_split_properties_on_simulated_log(sim_log: RequestLog) -> None:
    log = sim_log
    split = assign_splits(log, SplitConfig())
    assert split.shape == (log.n_requests,)
    assert set(np.unique(split).tolist()) == {C, D, T}
    users = np.unique(log.req_user)
    assert users.size > 100
    for u in users:
        m = log.req_user == u
        s, t = split[m], log.req_time[m]
        assert (s == T).any(), u
        for early, late in ((C, D), (C, T), (D, T)):
            if (s == early).any() and (s == late).any():
                assert t[s == early].max() <= t[s == late].min(), (u, early, late)
    # no slate has requests in two splits
    for sl in np.unique(log.req_slate):
        assert np.unique(split[log.req_slate == sl]).size == 1
    # an independent oracle: the floor rule per user with integer cut points (n * 5 // 10 and
    # n * 8 // 10 are floor(0.5 n) and floor(0.8 n) exactly), then the latest split per slate
    floor = np.empty(log.n_requests, np.int8)
    for u in users:
        idx = sorted(np.flatnonzero(log.req_user == u), key=lambda i: (log.req_time[i], i))
        n = len(idx)
        for rank, i in enumerate(idx):
            floor[i] = C if rank < n * 5 // 10 else D if rank < n * 8 // 10 else T
    page = {}
    for i, sl in enumerate(log.req_slate.tolist()):
        page[sl] = max(page.get(sl, C), int(floor[i]))
    expected = np.array([page[sl] for sl in log.req_slate.tolist()], np.int8)
    np.testing.assert_array_equal(split, expected)
    assert (split >= floor).all()
    assert (split != floor).any()  # the simulated log has pages that cross a cut


def test_split_is_deterministic_on_simulated_log(sim_log: RequestLog) -> None:
    a = assign_splits(sim_log, SplitConfig())
    b = assign_splits(sim_log, SplitConfig())
    np.testing.assert_array_equal(a, b)


# ================================================================================ Partitions
def _partition_log() -> RequestLog:
    # users 1 and 4 have no requests; user 3's requests are stored out of time order
    users = [0, 0, 0, 2, 3, 3, 3, 3, 3, 5]
    times = [1.0, 2.0, 3.0, 7.0, 50.0, 10.0, 40.0, 20.0, 30.0, 4.0]
    return split_log(users, times, list(range(len(users))), 6)


def test_partition_ids_map_to_users_with_requests() -> None:
    log = _partition_log()
    parts = Partitions(log, assign_splits(log, SplitConfig()))
    assert parts.num_partitions == 4
    assert parts.users.tolist() == [0, 2, 3, 5]
    assert [parts.user_of(p) for p in range(4)] == [0, 2, 3, 5]
    again = Partitions(log, assign_splits(log, SplitConfig()))
    assert again.users.tolist() == parts.users.tolist()
    for p in range(4):
        np.testing.assert_array_equal(again.requests(p), parts.requests(p))


def test_partition_requests_are_time_ordered_and_split() -> None:
    log = _partition_log()
    split = assign_splits(log, SplitConfig())
    # user 3 (partition 2) by time: idx 5 (10), 7 (20), 8 (30), 6 (40), 4 (50) -> C C D D T
    assert split[[5, 7, 8, 6, 4]].tolist() == [C, C, D, D, T]
    parts = Partitions(log, split)
    assert parts.requests(0).tolist() == [0, 1, 2]
    assert parts.requests(1).tolist() == [3]
    assert parts.requests(2).tolist() == [5, 7, 8, 6, 4]
    assert parts.requests(3).tolist() == [9]
    assert parts.requests(2, "cloud").tolist() == [5, 7]
    assert parts.requests(2, DEVICE).tolist() == [8, 6]
    assert parts.requests(2, "test").tolist() == [4]
    assert parts.requests(0, "device").tolist() == [1]
    assert parts.requests(1, "cloud").tolist() == []
    assert parts.requests(1, TEST).tolist() == [3]


@pytest.mark.parametrize("pid", [-1, 4, 100])
def test_partition_id_out_of_range(pid: int) -> None:
    log = _partition_log()
    parts = Partitions(log, assign_splits(log, SplitConfig()))
    with pytest.raises(ValueError, match=r"out of range \[0, 4\)"):
        parts.user_of(pid)
    with pytest.raises(ValueError, match="out of range"):
        parts.requests(pid)


def test_partitions_reject_wrong_split_shape() -> None:
    log = _partition_log()
    with pytest.raises(ValueError, match=r"shape \(10,\)"):
        Partitions(log, np.zeros(9, np.int8))


def test_of_split_covers_each_request_once() -> None:
    log = _partition_log()
    split = assign_splits(log, SplitConfig())
    parts = Partitions(log, split)
    assert parts.of_split("cloud").tolist() == [0, 5, 7]
    assert parts.of_split(DEVICE).tolist() == [1, 8, 6]
    assert parts.of_split("test").tolist() == [2, 3, 4, 9]
    everything = np.concatenate([parts.of_split(s) for s in SPLITS])
    assert sorted(everything.tolist()) == list(range(log.n_requests))


def test_partitions_on_simulated_log(sim_log: RequestLog) -> None:
    split = assign_splits(sim_log, SplitConfig())
    parts = Partitions(sim_log, split)
    users_with_requests = np.flatnonzero(np.bincount(sim_log.req_user, minlength=200))
    np.testing.assert_array_equal(parts.users, users_with_requests)
    seen = []
    for p in range(parts.num_partitions):
        idx = parts.requests(p)
        assert (sim_log.req_user[idx] == parts.user_of(p)).all()
        assert (np.diff(sim_log.req_time[idx]) >= 0).all()
        assert parts.requests(p, "test").size >= 1
        seen.append(idx)
    assert np.sort(np.concatenate(seen)).tolist() == list(range(sim_log.n_requests))
    for s in SPLITS:
        idx = parts.of_split(s)
        assert np.unique(idx).size == idx.size == (split == SPLITS.index(s)).sum()
        assert (split[idx] == SPLITS.index(s)).all()


# ========================================================================= activity buckets
def test_activity_buckets_hand_computed() -> None:
    # exposures per user [0, 1, 2, 3, 10]; user 0 has none and is left out of the quantiles:
    # np.quantile([1, 2, 3, 10], 0.5) = 2.5; at 0.9 the position is 2.7 -> 3 + 0.7 * 7 = 7.9
    log = split_log([1, 2, 3, 4], [0.0, 0.0, 0.0, 0.0], [0, 1, 2, 3], 5, [0, 1, 2, 3, 10])
    bucket, thr = activity_buckets(log, ActivityConfig())
    np.testing.assert_allclose(thr, [2.5, 7.9])
    assert bucket.dtype == np.int8
    assert bucket.tolist() == [0, 0, 0, 1, 2]


def test_activity_buckets_thresholds_inclusive_for_head() -> None:
    # exposures [1, 2, 3, 4, 5], quantiles (0.5, 0.75) -> thresholds 3 and 4 exactly:
    # tail is < 3, head is >= 4
    log = split_log([0], [0.0], [0], 5, [1, 2, 3, 4, 5])
    bucket, thr = activity_buckets(log, ActivityConfig([0.5, 0.75]))
    assert thr.tolist() == [3.0, 4.0]
    assert bucket.tolist() == [0, 0, 1, 2, 2]
