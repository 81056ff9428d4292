"""Schema, RequestLog validation and batch gathering on a tiny hand-made log whose every batch
entry is computed by hand (see ``_builders.tiny_log``); the on-disk format is in test_storage."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _builders import tiny_log, tiny_schema

from shoal.datasets.requests import RequestLog
from shoal.datasets.schema import DEFAULT_DECAY_BOUNDARIES, ActionSpec, Schema


@pytest.fixture
def log() -> RequestLog:
    return tiny_log()


# ================================================================================ ActionSpec
def test_bucket_action_boundaries_go_to_upper_bucket() -> None:
    a = ActionSpec("d", "bucket", (1.0, 2.0, 5.0))
    values = np.array([-3.0, 0.999, 1.0, 1.5, 2.0, 4.99, 5.0, 1e9])
    ids = a.bucketize(values)
    assert ids.dtype == np.int32
    assert ids.tolist() == [1, 1, 2, 2, 3, 3, 4, 4]
    assert a.vocab == 5  # padding + 4 buckets
    assert a.bucketize(np.array([[0.0, 2.0], [7.0, 1.0]])).tolist() == [[1, 3], [4, 2]]


def test_binary_action() -> None:
    a = ActionSpec("liked", "binary", (), 2)
    ids = a.bucketize(np.array([0.0, 1.0, 0.0, 3.0, -1.0]))
    assert ids.dtype == np.int32
    assert ids.tolist() == [1, 2, 1, 2, 1]
    assert a.vocab == 3


def test_category_action_clips_out_of_range_codes() -> None:
    a = ActionSpec("reason", "category", (), 4)
    ids = a.bucketize(np.array([0, 1, 3, 4, 9, -2], dtype=np.float32))
    assert ids.dtype == np.int32
    assert ids.tolist() == [1, 2, 4, 4, 4, 1]
    assert a.vocab == 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "ordinal"}, "kind must be one of"),
        ({"kind": "bucket"}, "boundaries"),
        ({"kind": "bucket", "boundaries": (1.0, 1.0)}, "increasing"),
        ({"kind": "bucket", "boundaries": (2.0, 1.0)}, "increasing"),
        ({"kind": "category", "n_values": 0}, "n_values"),
    ],
)
def test_action_spec_rejects_bad_definitions(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ActionSpec("x", **kwargs)


# ==================================================================================== Schema
def test_schema_vocab_properties() -> None:
    s = tiny_schema()
    # IE: dur bucket (2 edges -> 4), reason category (3 -> 4), time-since (2 edges -> 4)
    assert s.ie_action_vocab == (4, 4, 4)
    # IPV: like binary -> 3, time-since -> 4
    assert s.ipv_action_vocab == (3, 4)
    assert s.decay_action.boundaries == (10.0, 50.0)
    default = Schema(("a",), (3,), (), (), ())
    assert default.decay_boundaries == DEFAULT_DECAY_BOUNDARIES
    assert default.ie_action_vocab == (len(DEFAULT_DECAY_BOUNDARIES) + 2,)


def test_schema_round_trip_through_json() -> None:
    s = tiny_schema()
    d = json.loads(json.dumps(s.to_dict()))  # lists instead of tuples, as after save
    back = Schema.from_dict(d)
    assert back == s
    assert back.ie_actions[1].kind == "category" and back.ie_actions[1].n_values == 3


@pytest.mark.parametrize("key", ["item_fields", "ie_actions", "label_names", "decay_boundaries"])
def test_schema_from_dict_missing_key(key: str) -> None:
    d = tiny_schema().to_dict()
    del d[key]
    with pytest.raises(ValueError, match=key):
        Schema.from_dict(d)


def test_schema_from_dict_action_missing_name() -> None:
    d = tiny_schema().to_dict()
    del d["ie_actions"][0]["name"]
    with pytest.raises(ValueError, match="name"):
        Schema.from_dict(d)


def test_schema_checks() -> None:
    with pytest.raises(ValueError, match="same length"):
        Schema(("a", "b"), (3,), (), (), ())
    with pytest.raises(ValueError, match="click"):
        Schema(("a",), (3,), (), (), (), label_names=("buy", "click"))


# ================================================================================ validate
def test_fixture_is_valid(log: RequestLog) -> None:
    log.validate()
    assert (log.n_users, log.n_items, log.n_requests) == (2, 3, 3)
    assert log.user_exposures().tolist() == [4, 2]


def _set(log: RequestLog, name: str, value: np.ndarray) -> RequestLog:
    setattr(log, name, value)
    return log


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        # wrong dtype
        ("ie_time", np.array([0, 10, 50, 95, 20, 200], np.float32), "'ie_time' must be float64"),
        ("req_user", np.array([0, 0, 1], np.int64), "'req_user' must be int32"),
        # wrong number of dimensions
        ("slate_len", np.array([[3, 4]], np.int32), "'slate_len' must be int32 with 1 dims"),
        # offsets must end at E (6 events)
        ("ie_offsets", np.array([0, 4, 5], np.int64), "ie_offsets bounds"),
        ("ipv_offsets", np.array([0, 1, 3], np.int64), "ipv_offsets bounds"),
        ("ie_offsets", np.array([0, 4], np.int64), r"ie_offsets length \(U \+ 1\)"),
        ("ie_offsets", np.array([0, 7, 6], np.int64), "ie_offsets non-decreasing"),
        # empty or reversed candidate slice
        ("req_start", np.array([0, 3, 1], np.int32), r"candidate slice \[req_start, req_end\)"),
        ("req_end", np.array([3, 1, 4], np.int32), r"candidate slice"),  # end < start
        ("req_start", np.array([-1, 2, 1], np.int32), r"candidate slice"),
        ("req_end", np.array([3, 3, 5], np.int32), r"candidate slice"),  # past slate_len 4
        # history end outside the user's events: u0 owns IE [0, 4), u1 owns [4, 6)
        ("req_ie_end", np.array([3, 5, 6], np.int64), "history end indices"),
        ("req_ie_end", np.array([3, 4, 3], np.int64), "history end indices"),
        ("req_ipv_end", np.array([1, 1, 0], np.int64), "history end indices"),
        # item ids above n_items = 3
        ("ie_item", np.array([1, 2, 3, 4, 2, 3], np.int32), "ie_item ids"),
        ("ipv_item", np.array([2, 4], np.int32), "ipv_item ids"),
        ("slate_item", np.array([[1, 2, 3, 0], [3, 1, 2, 4]], np.int32), "slate_item ids"),
        # item feature out of its vocabulary (brand vocab is 5)
        ("item_feat", np.array([[0, 0], [1, 2], [2, 3], [3, 5]], np.int32), "'brand'"),
        # cross references
        ("req_slate", np.array([0, 0, 2], np.int32), "req_slate"),
        ("req_slate", np.array([0, 1, 1], np.int32), "req_user"),
        ("req_trigger", np.array([2, 0, 4], np.int8), "req_trigger"),
        ("req_time", np.array([60.0, 100.0], np.float64), "req_time length"),
        ("req_truth", np.zeros((3, 3), np.float16), r"req_truth shape \(R, W\)"),
    ],
)
def test_validate_names_the_problem(
    log: RequestLog, name: str, value: np.ndarray, match: str
) -> None:
    _set(log, name, value)
    with pytest.raises(ValueError, match=match) as info:
        log.validate()
    assert "tiny" in str(info.value)


def test_validate_action_columns_must_match_schema(log: RequestLog) -> None:
    log.ie_act = log.ie_act[:, :1].copy()
    with pytest.raises(ValueError, match="ie_act columns"):
        log.validate()


# =================================================================================== batch
def test_batch_candidates_and_labels(log: RequestLog) -> None:
    b = log.batch(np.array([0, 1, 2]), ie_len=3, ipv_len=2)
    assert len(b) == 3
    assert b.request.tolist() == [0, 1, 2]
    assert b.user.tolist() == [0, 0, 1]
    # K = longest slice = 3. r0: slate 0 [0, 3); r1: slate 0 [2, 3); r2: slate 1 [1, 4)
    assert b.cand_item.tolist() == [[1, 2, 3], [3, 0, 0], [1, 2, 1]]
    assert b.cand_pos.tolist() == [[0, 1, 2], [2, 0, 0], [1, 2, 3]]
    assert b.cand_mask.tolist() == [[True] * 3, [True, False, False], [True] * 3]
    assert b.cand_feat.tolist() == [
        [[1, 2], [2, 3], [3, 4]],
        [[3, 4], [0, 0], [0, 0]],
        [[1, 2], [2, 3], [1, 2]],
    ]
    np.testing.assert_allclose(
        b.cand_score[..., 0], [[0.9, 0.8, 0.7], [0.7, 0, 0], [0.4, 0.3, 0.2]], rtol=1e-6
    )
    assert b.click.tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 1]]
    assert b.label[..., 1].tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 1]]
    assert b.label_mask.tolist() == [
        [True, True, False],
        [False, False, False],
        [True, True, False],
    ]
    np.testing.assert_allclose(b.truth, [[0.1, 0.2, 0.3], [0.6, 0, 0], [0.8, 0.9, 1.0]], atol=1e-3)
    for name, dtype in [
        ("cand_item", np.int32),
        ("cand_feat", np.int32),
        ("cand_score", np.float32),
        ("cand_pos", np.int32),
        ("label", np.int8),
        ("ie_item", np.int32),
        ("ie_act", np.int32),
        ("ie_len", np.int32),
        ("ipv_act", np.int32),
        ("truth", np.float32),
    ]:
        assert getattr(b, name).dtype == dtype, name


def test_batch_sequences_keep_newest_events_oldest_first(log: RequestLog) -> None:
    b = log.batch(np.array([0, 1, 2]), ie_len=3, ipv_len=2)
    # r0: u0 events [0, 3); r1: events [0, 4) capped to the newest 3 = [1, 4);
    # r2: u1 events [4, 6), one padded slot
    assert b.ie_item.tolist() == [[1, 2, 3], [2, 3, 1], [2, 3, 0]]
    assert b.ie_len.tolist() == [3, 3, 2]
    assert b.ie_mask.tolist() == [[True] * 3, [True] * 3, [True, True, False]]
    assert b.ie_feat.tolist() == [
        [[1, 2], [2, 3], [3, 4]],
        [[2, 3], [3, 4], [1, 2]],
        [[2, 3], [3, 4], [0, 0]],
    ]
    # columns: dur (edges 1, 2), reason (3 codes, clipped), time since (edges 10, 50).
    # r0 t=60: dur .5/1/2.5 -> 1/2/3; reason 0/1/2 -> 1/2/3; since 60/50/10 -> 3/3/2
    # r1 t=100: dur 1/2.5/1.5 -> 2/3/2; reason 1/2/5 -> 2/3/3; since 90/50/5 -> 3/3/1
    # r2 t=210: dur 3/.1 -> 3/1; reason 1/0 -> 2/1; since 190/10 -> 3/2; padding 0
    assert b.ie_act.tolist() == [
        [[1, 1, 3], [2, 2, 3], [3, 3, 2]],
        [[2, 2, 3], [3, 3, 3], [2, 3, 1]],
        [[3, 2, 3], [1, 1, 2], [0, 0, 0]],
    ]
    # IPV: r0/r1 see u0's event (item 2, like 1, t=12): since 48 -> 2, since 88 -> 3;
    # r2 sees u1's (item 3, like 0, t=205): since 5 -> 1
    assert b.ipv_item.tolist() == [[2, 0], [2, 0], [3, 0]]
    assert b.ipv_len.tolist() == [1, 1, 1]
    assert b.ipv_mask.tolist() == [[True, False]] * 3
    assert b.ipv_feat.tolist() == [[[2, 3], [0, 0]], [[2, 3], [0, 0]], [[3, 4], [0, 0]]]
    assert b.ipv_act.tolist() == [[[2, 2], [0, 0]], [[2, 3], [0, 0]], [[1, 1], [0, 0]]]


def test_batch_default_caps_pad_on_the_right(log: RequestLog) -> None:
    b = log.batch(np.array([1]))
    assert b.ie_item.shape == (1, 50) and b.ipv_item.shape == (1, 20)
    assert b.ie_act.shape == (1, 50, 3) and b.ipv_act.shape == (1, 20, 2)
    assert b.ie_item[0, :4].tolist() == [1, 2, 3, 1]
    assert b.ie_len.tolist() == [4]
    assert not b.ie_item[0, 4:].any() and not b.ie_act[0, 4:].any()
    assert not b.ie_feat[0, 4:].any() and not b.ipv_act[0, 1:].any()


def test_batch_order_and_repeats_follow_idx(log: RequestLog) -> None:
    b = log.batch(np.array([2, 0, 2]), ie_len=3, ipv_len=2)
    assert b.request.tolist() == [2, 0, 2]
    assert b.cand_item.tolist() == [[1, 2, 1], [1, 2, 3], [1, 2, 1]]
    assert b.ie_item.tolist() == [[2, 3, 0], [1, 2, 3], [2, 3, 0]]


def test_batch_single_short_request_has_k_one(log: RequestLog) -> None:
    b = log.batch([1], ie_len=2, ipv_len=1)
    assert b.cand_item.tolist() == [[3]]
    assert b.cand_pos.tolist() == [[2]]
    assert b.ie_item.tolist() == [[3, 1]]  # newest two of u0's four events, oldest first


def test_batch_request_with_empty_history(log: RequestLog) -> None:
    log.req_ie_end = np.array([0, 4, 4], np.int64)  # r0 before u0's first event, r2 before u1's
    log.req_ipv_end = np.array([0, 1, 1], np.int64)
    log.validate()
    b = log.batch(np.array([0, 2]), ie_len=3, ipv_len=2)
    assert b.ie_len.tolist() == [0, 0] and b.ipv_len.tolist() == [0, 0]
    assert not b.ie_item.any() and not b.ie_act.any() and not b.ie_feat.any()
    assert not b.ipv_item.any() and not b.ipv_act.any()


def test_batch_on_log_without_page_views(log: RequestLog) -> None:
    # A valid log may have no IPV events at all (e.g. a window with no clicks).
    log.ipv_offsets = np.zeros(3, np.int64)
    log.ipv_item = np.zeros(0, np.int32)
    log.ipv_time = np.zeros(0, np.float64)
    log.ipv_act = np.zeros((0, 1), np.float32)
    log.req_ipv_end = np.zeros(3, np.int64)
    log.validate()
    b = log.batch(np.array([0, 1, 2]), ie_len=3, ipv_len=2)
    assert b.ipv_len.tolist() == [0, 0, 0]
    assert b.ipv_item.tolist() == [[0, 0]] * 3
    assert b.ie_len.tolist() == [3, 3, 2]


def test_batch_without_truth(log: RequestLog) -> None:
    log.req_truth = None
    log.validate()
    assert log.batch(np.array([0])).truth is None


def test_batch_empty_index(log: RequestLog) -> None:
    b = log.batch(np.zeros(0, np.int64), ie_len=3, ipv_len=2)
    assert len(b) == 0
    assert b.cand_item.shape == (0, 0) and b.ie_item.shape == (0, 3)


@pytest.mark.parametrize("idx", [[3], [0, -1], [0, 1, 2, 10]])
def test_batch_index_out_of_range(log: RequestLog, idx: list[int]) -> None:
    with pytest.raises(ValueError, match=r"out of range \[0, 3\)"):
        log.batch(np.array(idx))


def test_batch_index_must_be_1d(log: RequestLog) -> None:
    with pytest.raises(ValueError, match="1-D"):
        log.batch(np.array([[0, 1]]))


def test_exposure_clicks(log: RequestLog) -> None:
    click, pos = log.exposure_clicks()
    # slate 0 observed at 0, 1 (clicks 0, 1); slate 1 at 0, 1, 2 (clicks 1, 0, 0)
    assert click.tolist() == [0, 1, 1, 0, 0]
    assert pos.tolist() == [0, 1, 0, 1, 2]
