"""Hand-made request logs shared by the data tests (plain functions, no pytest magic).

``tiny_log`` is small enough that every batch entry can be computed by hand; the comments give
the events and slates the expectations in ``test_requests.py`` are derived from.
``split_log`` builds a minimal valid log from per-request (user, time, slate) triples, for
the split and partition tests.
"""

from __future__ import annotations

import numpy as np

from shoal.datasets.requests import RequestLog
from shoal.datasets.schema import ActionSpec, Schema


def tiny_schema() -> Schema:
    """Two item fields, one cloud score, IE actions bucket+category, IPV action binary."""
    return Schema(
        item_fields=("cat", "brand"),
        item_vocab=(4, 5),
        score_names=("s0",),
        ie_actions=(
            ActionSpec("dur", "bucket", (1.0, 2.0), 0, "seconds"),
            ActionSpec("reason", "category", (), 3, "delete reason"),
        ),
        ipv_actions=(ActionSpec("like", "binary", (), 2, "liked"),),
        label_names=("click", "buy"),
        decay_boundaries=(10.0, 50.0),
        extra={"note": "tiny"},
    )


def tiny_log() -> RequestLog:
    """2 users, 3 items, 6 IE + 2 IPV events, 2 slates of width 4, 3 requests.

    Items (row 0 padding): 1 -> (1, 2), 2 -> (2, 3), 3 -> (3, 4).

    IE events (global index: user, item, time, dur, reason):
      0: u0, 1,   0.0, 0.5, 0      3: u0, 1,  95.0, 1.5, 5
      1: u0, 2,  10.0, 1.0, 1      4: u1, 2,  20.0, 3.0, 1
      2: u0, 3,  50.0, 2.5, 2      5: u1, 3, 200.0, 0.1, 0
    IPV events: 0: u0, item 2, t=12, like 1;  1: u1, item 3, t=205, like 0.

    Slate 0 (u0, len 3): items [1, 2, 3, 0], scores [.9, .8, .7, 0], click [0, 1, 0, 0],
    buy [0, 1, 0, 0], observed [T, T, F, F].
    Slate 1 (u1, len 4): items [3, 1, 2, 1], scores [.5, .4, .3, .2], click [1, 0, 0, 1],
    buy [0, 0, 0, 1], observed [T, T, T, F].

    Requests: r0 u0 t=60 slate 0 [0, 3) ie_end 3 ipv_end 1 trigger 2;
              r1 u0 t=100 slate 0 [2, 3) ie_end 4 ipv_end 1 trigger 0;
              r2 u1 t=210 slate 1 [1, 4) ie_end 6 ipv_end 2 trigger 1.
    """
    i32, i64, f32, f64 = np.int32, np.int64, np.float32, np.float64
    return RequestLog(
        name="tiny",
        schema=tiny_schema(),
        item_feat=np.array([[0, 0], [1, 2], [2, 3], [3, 4]], i32),
        user_key=np.array([100, 200], i64),
        ie_offsets=np.array([0, 4, 6], i64),
        ie_item=np.array([1, 2, 3, 1, 2, 3], i32),
        ie_time=np.array([0.0, 10.0, 50.0, 95.0, 20.0, 200.0], f64),
        ie_act=np.array([[0.5, 0], [1.0, 1], [2.5, 2], [1.5, 5], [3.0, 1], [0.1, 0]], f32),
        ipv_offsets=np.array([0, 1, 2], i64),
        ipv_item=np.array([2, 3], i32),
        ipv_time=np.array([12.0, 205.0], f64),
        ipv_act=np.array([[1.0], [0.0]], f32),
        slate_user=np.array([0, 1], i32),
        slate_item=np.array([[1, 2, 3, 0], [3, 1, 2, 1]], i32),
        slate_score=np.array([[0.9, 0.8, 0.7, 0.0], [0.5, 0.4, 0.3, 0.2]], f32)[..., None],
        slate_label=np.stack(
            [[[0, 1, 0, 0], [1, 0, 0, 1]], [[0, 1, 0, 0], [0, 0, 0, 1]]], axis=-1
        ).astype(np.int8),
        slate_observed=np.array([[1, 1, 0, 0], [1, 1, 1, 0]], bool),
        slate_len=np.array([3, 4], i32),
        req_user=np.array([0, 0, 1], i32),
        req_time=np.array([60.0, 100.0, 210.0], f64),
        req_slate=np.array([0, 0, 1], i32),
        req_start=np.array([0, 2, 1], i32),
        req_end=np.array([3, 3, 4], i32),
        req_ie_end=np.array([3, 4, 6], i64),
        req_ipv_end=np.array([1, 1, 2], i64),
        req_trigger=np.array([2, 0, 1], np.int8),
        req_truth=np.array(
            [[0.1, 0.2, 0.3, 0.0], [0.4, 0.5, 0.6, 0.0], [0.7, 0.8, 0.9, 1.0]], np.float16
        ),
        info={"source": "hand-made", "seed": 7},
    )


def split_log(
    req_user: list[int],
    req_time: list[float],
    req_slate: list[int],
    n_users: int,
    ie_counts: list[int] | None = None,
) -> RequestLog:
    """A minimal valid log with the given requests (one candidate per slate position).

    Each slate has width 1 and belongs to the user of its requests. User ``u`` gets
    ``ie_counts[u]`` exposure events (default 0); every request's history is empty.
    """
    req_user_a = np.asarray(req_user, np.int32)
    req_slate_a = np.asarray(req_slate, np.int32)
    S = int(req_slate_a.max()) + 1 if req_slate_a.size else 0
    slate_user = np.zeros(S, np.int32)
    slate_user[req_slate_a] = req_user_a
    counts = np.asarray(ie_counts if ie_counts is not None else [0] * n_users, np.int64)
    ie_offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    E = int(ie_offsets[-1])
    R = req_user_a.size
    schema = Schema(
        item_fields=("cat",),
        item_vocab=(2,),
        score_names=(),
        ie_actions=(),
        ipv_actions=(),
    )
    return RequestLog(
        name="split",
        schema=schema,
        item_feat=np.array([[0], [1]], np.int32),
        user_key=np.arange(n_users, dtype=np.int64),
        ie_offsets=ie_offsets,
        ie_item=np.ones(E, np.int32),
        ie_time=np.arange(E, dtype=np.float64),
        ie_act=np.zeros((E, 0), np.float32),
        ipv_offsets=np.zeros(n_users + 1, np.int64),
        ipv_item=np.zeros(0, np.int32),
        ipv_time=np.zeros(0, np.float64),
        ipv_act=np.zeros((0, 0), np.float32),
        slate_user=slate_user,
        slate_item=np.ones((S, 1), np.int32),
        slate_score=np.zeros((S, 1, 0), np.float32),
        slate_label=np.zeros((S, 1, 1), np.int8),
        slate_observed=np.ones((S, 1), bool),
        slate_len=np.ones(S, np.int32),
        req_user=req_user_a,
        req_time=np.asarray(req_time, np.float64),
        req_slate=req_slate_a,
        req_start=np.zeros(R, np.int32),
        req_end=np.ones(R, np.int32),
        req_ie_end=ie_offsets[req_user_a],
        req_ipv_end=np.zeros(R, np.int64),
        req_trigger=np.zeros(R, np.int8),
    )
