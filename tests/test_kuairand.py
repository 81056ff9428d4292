"""KuaiRand loader: exact mapping on hand-made CSVs, error messages, and the shared 1K log."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from shoal.config import KuaiRandConfig
from shoal.datasets import storage
from shoal.datasets.kuairand import FIRST_GAP, load_kuairand
from shoal.datasets.requests import TRIGGERS

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "kuairand-1k"
LOG = "log.csv"
FEAT = "feat.csv"

# Log columns in a non-standard order, with extra columns the loader ignores.
LOG_HEADER = [
    "video_id",
    "tab",
    "user_id",
    "time_ms",
    "is_click",
    "is_like",
    "is_follow",
    "is_comment",
    "is_forward",
    "is_hate",
    "long_view",
    "play_time_ms",
    "duration_ms",
    "profile_stay_time",
    "comment_stay_time",
    "is_profile_enter",
    "date",
]
FEAT_HEADER = [
    "tag",
    "video_id",
    "upload_dt",
    "author_id",
    "video_type",
    "upload_type",
    "music_type",
    "video_duration",
]


def _row(user: int, video: int, t_ms: int, **kw: int) -> dict[str, int]:
    row = {c: 0 for c in LOG_HEADER}
    row.update(user_id=user, video_id=video, time_ms=t_ms, **kw)
    return row


# User 3: five exposures after dropping the duplicate; 200 and 300 tie at 1030 s (file order).
# User 7: rows out of time order in the file. User 5: a single exposure (no request).
ROWS = [
    _row(3, 100, 1_000_000, is_click=1, is_like=1, play_time_ms=5000, duration_ms=10000),
    _row(7, 200, 5_000_000, play_time_ms=1000, duration_ms=20000),
    _row(3, 200, 1_030_000, play_time_ms=1500, duration_ms=20000),
    _row(3, 300, 1_030_000, play_time_ms=9000, duration_ms=45000),
    _row(5, 100, 2_000_000, is_click=1, play_time_ms=3000, duration_ms=10000),
    _row(
        3,
        100,
        1_100_000,
        is_click=1,
        is_follow=1,
        is_profile_enter=1,
        profile_stay_time=4000,
        play_time_ms=2500,
        duration_ms=10000,
    ),
    _row(7, 500, 5_000_500, is_click=1, long_view=1, play_time_ms=40000, duration_ms=30000),
    _row(3, 400, 8_900_000, is_hate=1),
    _row(7, 300, 4_000_000, play_time_ms=500, duration_ms=45000),
    _row(3, 100, 1_000_000, is_click=1, is_like=1, play_time_ms=5000, duration_ms=10000),  # dup
]
FEATURES = [  # video 400 is missing; 999 is not in the log
    {
        "video_id": 100,
        "author_id": 77,
        "video_type": "NORMAL",
        "upload_type": "Web",
        "music_type": "9.0",
        "tag": "5,7",
        "video_duration": "10000.0",
    },
    {
        "video_id": 200,
        "author_id": 12,
        "video_type": "AD",
        "upload_type": "Kmovie",
        "music_type": "",
        "tag": "",
        "video_duration": "20000.0",
    },
    {
        "video_id": 300,
        "author_id": 77,
        "video_type": "NORMAL",
        "upload_type": "Web",
        "music_type": "4.0",
        "tag": "12",
        "video_duration": "",
    },
    {
        "video_id": 500,
        "author_id": 5,
        "video_type": "NORMAL",
        "upload_type": "ShortImport",
        "music_type": "9",
        "tag": "5",
        "video_duration": "30000.0",
    },
    {
        "video_id": 999,
        "author_id": 1,
        "video_type": "UNKNOWN",
        "upload_type": "Web",
        "music_type": "8.0",
        "tag": "99",
        "video_duration": "1000.0",
    },
]


def _write(path: Path, header: list[str], rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header, restval="2022-04-10")
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    _write(tmp_path / LOG, LOG_HEADER, ROWS)
    _write(tmp_path / FEAT, FEAT_HEADER, FEATURES)
    return tmp_path


def _cfg(**kw) -> KuaiRandConfig:
    return KuaiRandConfig(log_file=LOG, features_file=FEAT, **kw)


def test_users_items_and_features(data: Path) -> None:
    log = load_kuairand(data, _cfg(candidates=2))
    assert log.name == "kuairand"
    np.testing.assert_array_equal(log.user_key, [3, 5, 7])
    assert log.n_items == 5  # videos 100, 200, 300, 400, 500 -> ids 1..5
    assert log.schema.item_fields == (
        "tag",
        "author",
        "video_type",
        "upload_type",
        "music_type",
        "duration_bucket",
    )
    # tag: first of the list, {5, 12}; author {5, 12, 77}; type {AD, NORMAL};
    # upload {Kmovie, ShortImport, Web}; music {4, 9} ("9" == "9.0"); duration 7 buckets + 0.
    assert log.schema.item_vocab == (3, 4, 3, 4, 3, 8)
    expected = [
        [0, 0, 0, 0, 0, 0],  # padding
        [1, 3, 2, 3, 2, 2],  # 100: 10 s
        [0, 2, 1, 1, 0, 3],  # 200: empty tag and music, 20 s
        [2, 3, 2, 3, 1, 4],  # 300: no video_duration -> log's 45 s
        [0, 0, 0, 0, 0, 0],  # 400: not in the features file, log duration 0
        [1, 1, 2, 2, 2, 4],  # 500: 30 s
    ]
    np.testing.assert_array_equal(log.item_feat, expected)
    assert log.info["n_videos_without_features"] == 1
    assert log.info["rows_read"] == 10
    assert log.info["duplicates_dropped"] == 1
    assert log.info["candidates"] == 2


def test_events_sorted_deduplicated_with_ties_in_file_order(data: Path) -> None:
    log = load_kuairand(data, _cfg(candidates=2))
    np.testing.assert_array_equal(log.ie_offsets, [0, 5, 6, 9])
    np.testing.assert_array_equal(log.ie_item, [1, 2, 3, 1, 4, 1, 3, 2, 5])
    np.testing.assert_allclose(
        log.ie_time, [1000, 1030, 1030, 1100, 8900, 2000, 4000, 5000, 5000.5]
    )
    # Raw IE actions of user 3: play s, duration s, ratio, long_view, gap_prev s, delete.
    np.testing.assert_allclose(
        log.ie_act[:5],
        [
            [5.0, 10.0, 0.5, 0, FIRST_GAP, 0],
            [1.5, 20.0, 0.075, 0, 30.0, 0],
            [9.0, 45.0, 0.2, 0, 0.0, 0],
            [2.5, 10.0, 0.25, 0, 70.0, 0],
            [0.0, 0.0, 0.0, 0, 7800.0, 1],  # unknown duration -> ratio 0; hate
        ],
        rtol=1e-6,
    )
    # IPV = clicked exposures.
    np.testing.assert_array_equal(log.ipv_offsets, [0, 2, 3, 4])
    np.testing.assert_array_equal(log.ipv_item, [1, 1, 1, 5])
    np.testing.assert_allclose(log.ipv_time, [1000, 1100, 2000, 5000.5])
    # play s, like, follow, comment, forward, profile_enter, profile_stay s, comment_stay s
    np.testing.assert_allclose(log.ipv_act[1], [2.5, 0, 1, 0, 0, 1, 4.0, 0.0])
    np.testing.assert_allclose(log.ipv_act[3], [40.0, 0, 0, 0, 0, 0, 0.0, 0.0])


def test_requests_candidates_and_labels(data: Path) -> None:
    log = load_kuairand(data, _cfg(candidates=2))
    assert log.n_requests == 3  # user 3 at exposures 1 and 3, user 7 at 1; user 5 none
    np.testing.assert_array_equal(log.req_user, [0, 0, 2])
    np.testing.assert_array_equal(log.slate_item, [[2, 3], [1, 4], [2, 5]])
    np.testing.assert_array_equal(log.slate_len, [2, 2, 2])
    np.testing.assert_array_equal(log.req_start, [0, 0, 0])
    np.testing.assert_array_equal(log.req_end, [2, 2, 2])
    assert log.slate_observed.all()
    np.testing.assert_allclose(log.req_time, [1030, 1100, 5000])
    np.testing.assert_array_equal(log.req_ie_end, [1, 3, 7])
    np.testing.assert_array_equal(log.req_ipv_end, [1, 1, 3])
    assert (log.req_trigger == TRIGGERS.index("window")).all()
    assert log.schema.label_names[:2] == ("click", "long_view")
    np.testing.assert_array_equal(
        log.slate_label[1], [[1, 0, 0, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0, 0, 1]]
    )
    np.testing.assert_array_equal(log.slate_label[2, :, :2], [[0, 0], [1, 1]])
    np.testing.assert_allclose(log.slate_score[0, :, 0], np.log1p([20.0, 45.0]), rtol=1e-6)
    np.testing.assert_allclose(log.slate_score[1, :, 0], [np.log1p(10.0), 0.0], rtol=1e-6)


def test_behaviour_sequences_via_batch(data: Path) -> None:
    log = load_kuairand(data, _cfg(candidates=2))
    b = log.batch(np.array([0, 1, 2]), ie_len=2, ipv_len=3)
    np.testing.assert_array_equal(b.ie_item, [[1, 0], [2, 3], [3, 0]])
    np.testing.assert_array_equal(b.ie_len, [1, 2, 1])
    # Columns: play_time, video_duration, play_ratio, long_view, gap_prev, delete, time_since.
    # play 5 s -> 5; 10 s -> 2; ratio 0.5 -> 4; first exposure -> last gap bucket 10;
    # 30 s before the request -> decay bucket 3.
    np.testing.assert_array_equal(b.ie_act[0, 0], [5, 2, 4, 1, 10, 1, 3])
    # Request 1 keeps the newest two: 200 (1.5 s -> 2, gap 30 s -> 1), 300 (9 s -> 6, gap 0).
    np.testing.assert_array_equal(b.ie_act[1, :, 0], [2, 6])
    np.testing.assert_array_equal(b.ie_act[1, :, 4], [1, 1])
    assert b.ie_act[2, 0, 4] == 10  # user 7's first exposure
    assert log.ie_act[7, 4] == 1000.0  # its next one, 1000 s later (gap bucket 3)
    np.testing.assert_array_equal(b.ipv_item, [[1, 0, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(b.ipv_len, [1, 1, 0])
    np.testing.assert_array_equal(b.ipv_act[0, 0], [5, 2, 1, 1, 1, 1, 1, 1, 3])
    np.testing.assert_array_equal(b.cand_feat[2], log.item_feat[[2, 5]])


def test_default_k(data: Path) -> None:
    log = load_kuairand(data, _cfg())  # K = 10
    assert log.slate_item.shape == (2, 10)
    np.testing.assert_array_equal(log.slate_len, [4, 2])
    np.testing.assert_array_equal(log.slate_item[0, :5], [2, 3, 1, 4, 0])


def test_log_file_path_and_absolute_names(data: Path, tmp_path_factory) -> None:
    a = load_kuairand(data / LOG, KuaiRandConfig(features_file=FEAT, candidates=2))
    b = load_kuairand(
        tmp_path_factory.mktemp("elsewhere"),
        KuaiRandConfig(log_file=str(data / LOG), features_file=str(data / FEAT), candidates=2),
    )
    for k, v in a.arrays().items():
        np.testing.assert_array_equal(v, b.arrays()[k], err_msg=k)


def test_missing_files(data: Path) -> None:
    with pytest.raises(ValueError, match="nope"):
        load_kuairand(data / "nope", _cfg())
    (data / FEAT).unlink()
    with pytest.raises(ValueError, match=FEAT):
        load_kuairand(data, _cfg())


def test_missing_column_names_file_and_column(data: Path) -> None:
    _write(
        data / LOG,
        [c for c in LOG_HEADER if c != "is_click"],
        [{k: v for k, v in r.items() if k != "is_click"} for r in ROWS],
    )
    with pytest.raises(ValueError, match=r"log\.csv: missing column 'is_click' \(header has"):
        load_kuairand(data, _cfg())
    _write(data / LOG, LOG_HEADER, ROWS)
    _write(
        data / FEAT,
        [c for c in FEAT_HEADER if c != "tag"],
        [{k: v for k, v in r.items() if k != "tag"} for r in FEATURES],
    )
    with pytest.raises(ValueError, match=r"feat\.csv: missing column 'tag'"):
        load_kuairand(data, _cfg())


def test_bad_values_name_file_line_and_column(data: Path) -> None:
    text = (data / LOG).read_text().splitlines()
    bad = text[3].split(",")
    bad[LOG_HEADER.index("time_ms")] = "abc"
    # A blank line after line 2 shifts the bad row (4th data row) to line 5.
    (data / LOG).write_text("\n".join([*text[:2], "", text[2], ",".join(bad), *text[4:]]) + "\n")
    with pytest.raises(ValueError, match=r"log\.csv, line 5, column 'time_ms': cannot parse 'abc'"):
        load_kuairand(data, _cfg())
    bad[LOG_HEADER.index("time_ms")] = "1"
    bad[LOG_HEADER.index("is_like")] = ""
    (data / LOG).write_text("\n".join([*text[:3], ",".join(bad), *text[4:]]) + "\n")
    with pytest.raises(ValueError, match=r"line 4, column 'is_like': cannot parse ''"):
        load_kuairand(data, _cfg())
    (data / LOG).write_text("\n".join([*text[:3], ",".join(bad[:-1]), *text[4:]]) + "\n")
    with pytest.raises(ValueError, match=r"log\.csv, line 4: expected 17 fields"):
        load_kuairand(data, _cfg())
    _write(data / LOG, LOG_HEADER, ROWS)
    feats = [dict(r) for r in FEATURES]
    feats[2]["video_duration"] = "long"
    _write(data / FEAT, FEAT_HEADER, feats)
    with pytest.raises(ValueError, match=r"feat\.csv, line 4, column 'video_duration'"):
        load_kuairand(data, _cfg())


def test_empty_log(data: Path) -> None:
    _write(data / LOG, LOG_HEADER, [])
    with pytest.raises(ValueError, match="no data rows"):
        load_kuairand(data, _cfg())
    (data / LOG).write_text("")
    with pytest.raises(ValueError, match="empty file"):
        load_kuairand(data, _cfg())


def test_real_kuairand_1k(tmp_path: Path) -> None:
    assert SHARED.is_dir(), f"shared KuaiRand data missing: expected {SHARED}"
    cfg = KuaiRandConfig()
    with open(SHARED / cfg.log_file, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = [r for r in reader if r]
    unique = list(dict.fromkeys(map(tuple, rows)))
    users = {r[header.index("user_id")] for r in unique}
    ctr = np.mean([r[header.index("is_click")] == "1" for r in unique])

    log = load_kuairand(SHARED, cfg)
    log.validate()
    assert log.n_users == len(users) == 799
    assert log.ie_item.size == len(unique)
    assert log.info["rows_read"] == len(rows) == 35_770
    assert log.info["duplicates_dropped"] == len(rows) - len(unique)
    assert log.ipv_item.size == sum(r[header.index("is_click")] == "1" for r in unique)
    assert abs(ctr - 0.177) < 0.001
    click, _ = log.exposure_clicks()
    assert abs(click.mean() - ctr) < 0.005  # labels cover all but each user's first exposure
    assert log.info["n_videos_without_features"] == 0

    saved = storage.save(log, tmp_path / "kr")
    back = storage.load(saved)
    assert back.schema == log.schema and back.info == log.info
    for k, v in log.arrays().items():
        np.testing.assert_array_equal(back.arrays()[k], v, err_msg=k)
