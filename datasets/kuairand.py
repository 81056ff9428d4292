"""KuaiRand random-exposure log as Shoal rerank requests (see ``docs/kuairand.md``).

KuaiRand (Gao et al., CIKM 2022, CC BY-SA 4.0) logs videos inserted at random into users'
feeds. Each exposure becomes an item-exposure (IE) event, each clicked exposure also an
item-page-view (IPV) event. A request takes a user's next ``K`` exposures (in time order, which
is the random "cloud" order) as candidates, labelled by what the user did with them, and all
earlier exposures as behaviour. Item features come from ``video_features_basic.csv``.

Item ids are dense ``1..I`` assigned in increasing ``video_id`` order over the videos of the
log, so ``np.unique(video_ids_of_the_log)[item - 1]`` recovers the original id.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from shoal.config import KuaiRandConfig
from shoal.datasets.requests import TRIGGERS, RequestLog
from shoal.datasets.schema import ActionSpec, Schema

LOG_COLUMNS = (
    "user_id",
    "video_id",
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
    "is_profile_enter",
)
OPTIONAL_LOG_COLUMNS = ("profile_stay_time", "comment_stay_time")
FEATURE_COLUMNS = (
    "video_id",
    "author_id",
    "video_type",
    "upload_type",
    "music_type",
    "tag",
    "video_duration",
)
ITEM_FIELDS = ("tag", "author", "video_type", "upload_type", "music_type", "duration_bucket")
_FIELD_COLUMN = {
    "tag": "tag",
    "author": "author_id",
    "video_type": "video_type",
    "upload_type": "upload_type",
    "music_type": "music_type",
}
SCORE_NAMES = ("log_video_duration",)
LABEL_NAMES = (
    "click",
    "long_view",
    "like",
    "follow",
    "comment",
    "forward",
    "profile_enter",
    "hate",
)
_LABEL_COLUMN = (
    "is_click",
    "long_view",
    "is_like",
    "is_follow",
    "is_comment",
    "is_forward",
    "is_profile_enter",
    "is_hate",
)

# Bucket boundaries, all in seconds (ratio for play_ratio).
PLAY_BOUNDARIES = (1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0, 120.0, 300.0)
DURATION_BOUNDARIES = (7.0, 15.0, 30.0, 60.0, 120.0, 300.0)
RATIO_BOUNDARIES = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5)
GAP_BOUNDARIES = (
    60.0,
    600.0,
    1800.0,
    3600.0,
    3 * 3600.0,
    12 * 3600.0,
    86400.0,
    3 * 86400.0,
    7 * 86400.0,
)
STAY_BOUNDARIES = (1.0, 3.0, 10.0, 30.0, 60.0, 300.0)
FIRST_GAP = 1e9
"""gap_prev of a user's first exposure (lands in the last bucket)."""

IE_ACTIONS = (
    ActionSpec("play_time", "bucket", PLAY_BOUNDARIES, 0, "play time, seconds"),
    ActionSpec("video_duration", "bucket", DURATION_BOUNDARIES, 0, "video duration, seconds"),
    ActionSpec("play_ratio", "bucket", RATIO_BOUNDARIES, 0, "play time / duration (0 if unknown)"),
    ActionSpec("long_view", "binary", (), 2, "long view flag"),
    ActionSpec("gap_prev", "bucket", GAP_BOUNDARIES, 0, "seconds since the previous exposure"),
    ActionSpec("delete_reason", "category", (), 2, "0 none, 1 hate"),
)
IPV_ACTIONS = (
    ActionSpec("play_time", "bucket", PLAY_BOUNDARIES, 0, "play time, seconds"),
    ActionSpec("like", "binary", (), 2, "liked"),
    ActionSpec("follow", "binary", (), 2, "followed the author"),
    ActionSpec("comment", "binary", (), 2, "commented"),
    ActionSpec("forward", "binary", (), 2, "forwarded"),
    ActionSpec("profile_enter", "binary", (), 2, "entered the author's profile"),
    ActionSpec("profile_stay", "bucket", STAY_BOUNDARIES, 0, "time on the profile, seconds"),
    ActionSpec("comment_stay", "bucket", STAY_BOUNDARIES, 0, "time in the comments, seconds"),
)


def kuairand_schema(item_vocab: Sequence[int]) -> Schema:
    """The KuaiRand schema given the vocabulary sizes of :data:`ITEM_FIELDS`."""
    return Schema(
        item_fields=ITEM_FIELDS,
        item_vocab=tuple(int(v) for v in item_vocab),
        score_names=SCORE_NAMES,
        ie_actions=IE_ACTIONS,
        ipv_actions=IPV_ACTIONS,
        label_names=LABEL_NAMES,
        extra={"source": "kuairand", "item_ids": "1..I in increasing video_id order"},
    )


def load_kuairand(path: str | Path, cfg: KuaiRandConfig | None = None) -> RequestLog:
    """Read a KuaiRand random-exposure log into a :class:`RequestLog`.

    Parameters
    ----------
    path : str or Path
        A folder holding ``cfg.log_file`` and ``cfg.features_file``, or the log CSV itself
        (the features file is then looked up beside it). Absolute file names in ``cfg`` win.
    cfg : KuaiRandConfig, optional
        File names and candidates per request ``K``.

    Returns
    -------
    RequestLog
        Validated; ``name="kuairand"``, times in epoch seconds, ``info`` with the source files,
        ``rows_read``, ``duplicates_dropped``, ``n_videos_without_features`` and
        ``candidates``.

    Raises
    ------
    ValueError
        A missing file, a missing column (naming file and column), a value that does not parse
        (naming file, 1-based line and column) or a log without data rows.
    """
    cfg = cfg or KuaiRandConfig()
    log_path, feat_path = _resolve(path, cfg)
    cols, rows = _read(log_path, LOG_COLUMNS)
    if not rows:
        raise ValueError(f"{log_path}: the log has no data rows (header only)")
    raw = {c: _parse(log_path, rows, cols[c], c, int) for c in LOG_COLUMNS}
    for c in OPTIONAL_LOG_COLUMNS:
        raw[c] = _parse(log_path, rows, cols[c], c, int) if c in cols else np.zeros(len(rows))
    for c, a in raw.items():
        if a.size and a.min() < 0:
            i = int(np.argmax(a < 0))
            raise ValueError(_where(log_path, i, c) + f": negative value {rows[i][cols[c]]!r}")

    # Exact duplicate rows (every cell equal): keep the first.
    seen: set[tuple[str, ...]] = set()
    keep = []
    for i, r in enumerate(rows):
        t = tuple(r)
        if t not in seen:
            seen.add(t)
            keep.append(i)
    keep_idx = np.asarray(keep, dtype=np.int64)
    order = keep_idx[np.lexsort((keep_idx, raw["time_ms"][keep_idx], raw["user_id"][keep_idx]))]
    ev = {c: a[order] for c, a in raw.items()}  # events sorted by (user, time, file order)

    user_key, user = np.unique(ev["user_id"], return_inverse=True)
    videos, item0 = np.unique(ev["video_id"], return_inverse=True)
    item = (item0 + 1).astype(np.int32)
    U, E = user_key.size, item.size
    log_dur = np.zeros(videos.size + 1)
    np.maximum.at(log_dur, item, ev["duration_ms"].astype(np.float64))
    item_feat, vocab, item_dur_ms, n_missing = _item_features(feat_path, videos, log_dur)

    ie_offsets = np.zeros(U + 1, dtype=np.int64)
    ie_offsets[1:] = np.cumsum(np.bincount(user, minlength=U))
    t_ms = ev["time_ms"]
    first = np.r_[True, user[1:] != user[:-1]]
    gap = np.where(first, FIRST_GAP, np.r_[0, np.diff(t_ms)] / 1000.0)
    play_s = ev["play_time_ms"] / 1000.0
    dur_ms = np.where(ev["duration_ms"] > 0, ev["duration_ms"], item_dur_ms[item]).astype(float)
    ratio = np.divide(play_s * 1000.0, dur_ms, out=np.zeros(E), where=dur_ms > 0)
    ie_act = np.stack(
        [play_s, dur_ms / 1000.0, ratio, ev["long_view"] > 0, gap, ev["is_hate"] > 0], axis=1
    ).astype(np.float32)
    labels = np.stack([ev[c] > 0 for c in _LABEL_COLUMN], axis=1).astype(np.int8)

    click = labels[:, 0] > 0
    ipv_offsets = np.zeros(U + 1, dtype=np.int64)
    ipv_offsets[1:] = np.cumsum(np.bincount(user[click], minlength=U))
    ipv_act = np.stack(
        [play_s]
        + [ev[c] > 0 for c in _LABEL_COLUMN[2:7]]
        + [ev["profile_stay_time"] / 1000.0, ev["comment_stay_time"] / 1000.0],
        axis=1,
    )[click].astype(np.float32)
    clicks_before = np.r_[0, np.cumsum(click)].astype(np.int64)  # global exclusive cumsum

    # Requests: user u with n exposures gets windows starting at 1, 1 + K, ... (< n).
    K = s = cfg.candidates
    n_u = np.diff(ie_offsets)
    r_u = np.where(n_u > 1, (n_u - 1 + s - 1) // s, 0)
    R = int(r_u.sum())
    req_user = np.repeat(np.arange(U), r_u)
    rank = np.arange(R) - np.repeat(np.cumsum(r_u) - r_u, r_u)
    g = ie_offsets[req_user] + 1 + rank * s  # global index of the first candidate
    length = np.minimum(K, ie_offsets[req_user + 1] - g)
    mask = np.arange(K)[None, :] < length[:, None]
    cand = np.where(mask, g[:, None] + np.arange(K)[None, :], 0)
    slate_item = np.where(mask, item[cand], 0).astype(np.int32)
    slate_label = (labels[cand] * mask[..., None]).astype(np.int8)
    score = np.log1p(item_dur_ms[slate_item] / 1000.0) * mask

    log = RequestLog(
        name="kuairand",
        schema=kuairand_schema(vocab),
        item_feat=item_feat,
        user_key=user_key.astype(np.int64),
        ie_offsets=ie_offsets,
        ie_item=item,
        ie_time=t_ms / 1000.0,
        ie_act=ie_act,
        ipv_offsets=ipv_offsets,
        ipv_item=item[click],
        ipv_time=t_ms[click] / 1000.0,
        ipv_act=ipv_act,
        slate_user=req_user.astype(np.int32),
        slate_item=slate_item,
        slate_score=score[..., None].astype(np.float32),
        slate_label=slate_label,
        slate_observed=mask,
        slate_len=length.astype(np.int32),
        req_user=req_user.astype(np.int32),
        req_time=t_ms[g] / 1000.0,
        req_slate=np.arange(R, dtype=np.int32),
        req_start=np.zeros(R, dtype=np.int32),
        req_end=length.astype(np.int32),
        req_ie_end=g.astype(np.int64),
        req_ipv_end=clicks_before[g],
        req_trigger=np.full(R, TRIGGERS.index("window"), dtype=np.int8),
        info={
            "source": "kuairand",
            "log_file": str(log_path),
            "features_file": str(feat_path),
            "rows_read": len(rows),
            "duplicates_dropped": len(rows) - len(keep),
            "n_videos_without_features": n_missing,
            "candidates": K,
        },
    )
    log.validate()
    return log


# ---------------------------------------------------------------------------------- helpers
def _resolve(path: str | Path, cfg: KuaiRandConfig) -> tuple[Path, Path]:
    p = Path(path)
    if p.is_dir():
        log_path, feat_path = p / cfg.log_file, p / cfg.features_file
    elif p.is_file():
        log_path, feat_path = p, p.parent / cfg.features_file
    else:
        raise ValueError(f"{p}: no such KuaiRand folder or log file")
    for f in (log_path, feat_path):
        if not f.is_file():
            raise ValueError(f"{f}: KuaiRand file not found")
    return log_path, feat_path


def _read(src: Path, required: Sequence[str]) -> tuple[dict[str, int], list[list[str]]]:
    """Header (column name -> index, first occurrence) and the non-blank data rows."""
    reader = None
    try:
        with open(src, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows = [r for r in reader if r]
    except UnicodeDecodeError as e:
        raise ValueError(f"{src}: not UTF-8 text ({e})") from e
    except csv.Error as e:
        raise ValueError(f"{src}, line {reader.line_num if reader else 1}: {e}") from e
    if not header:
        raise ValueError(f"{src}: empty file (no header line)")
    names = [h.strip() for h in header]
    missing = [c for c in required if c not in names]
    if missing:
        which = ", ".join(repr(c) for c in missing)
        plural = "s" if len(missing) > 1 else ""
        raise ValueError(f"{src}: missing column{plural} {which} (header has: {', '.join(names)})")
    for i, r in enumerate(rows):
        if len(r) != len(names):
            raise ValueError(
                f"{_where(src, i)}: expected {len(names)} fields as in the header, got {len(r)}"
            )
    cols: dict[str, int] = {}
    for j, n in enumerate(names):
        cols.setdefault(n, j)
    return cols, rows


def _line_of(src: Path, row: int) -> int:
    """1-based line number of data row ``row`` (blank lines skipped; header is line 1)."""
    with open(src, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        k = -2
        for r in reader:
            k += bool(r)
            if k == row:
                return reader.line_num
    return -1


def _where(src: Path, row: int, column: str | None = None) -> str:
    out = f"{src}, line {_line_of(src, row)}"
    return out + (f", column {column!r}" if column else "")


def _opt_float(s: str) -> float:
    """Float of a features cell; empty -> NaN (unknown); non-finite numbers are errors."""
    s = s.strip()
    if not s:
        return math.nan
    v = float(s)
    if not math.isfinite(v):
        raise ValueError(s)
    return v


def _parse(
    src: Path, rows: list[list[str]], j: int, name: str, conv: Callable[[str], float]
) -> np.ndarray:
    """Column ``j`` converted with ``conv`` (``int`` or :func:`_opt_float`)."""
    col = [r[j] for r in rows]
    dtype = np.int64 if conv is int else np.float64
    try:
        return np.fromiter(map(conv, col), dtype=dtype, count=len(col))
    except (ValueError, OverflowError):
        pass
    kind = "integer" if conv is int else "number"
    for i, c in enumerate(col):
        try:
            np.array([conv(c)], dtype=dtype)
        except (ValueError, OverflowError):
            raise ValueError(f"{_where(src, i, name)}: cannot parse {c!r} as {kind}") from None
    raise AssertionError("unreachable")  # pragma: no cover


def _codes(values: list[str]) -> tuple[np.ndarray, int]:
    """Category ids 1..n in sorted order of the distinct non-empty values (numeric order when
    all are numbers, so '9' and '9.0' are one value); empty -> 0. Returns ids and vocab."""
    uniq = sorted({v for v in values if v})
    try:
        num = {v: float(v) for v in uniq}
        if any(math.isnan(x) for x in num.values()):
            raise ValueError
        rank = {x: i + 1 for i, x in enumerate(sorted(set(num.values())))}
        code = {v: rank[num[v]] for v in uniq}
    except ValueError:
        code = {v: i + 1 for i, v in enumerate(uniq)}
    ids = np.fromiter((code.get(v, 0) for v in values), dtype=np.int32, count=len(values))
    return ids, len(set(code.values())) + 1


def _item_features(
    src: Path, videos: np.ndarray, log_dur_ms: np.ndarray
) -> tuple[np.ndarray, list[int], np.ndarray, int]:
    """Catalog (I + 1, F), vocab sizes, item duration in ms (0 unknown), videos not in ``src``.

    ``videos`` are the log's sorted unique video ids (item ``i`` is ``videos[i - 1]``);
    ``log_dur_ms[i]`` is the largest ``duration_ms`` the log holds for item ``i``.
    """
    cols, rows = _read(src, FEATURE_COLUMNS)
    fvid = _parse(src, rows, cols["video_id"], "video_id", int)
    fdur = _parse(src, rows, cols["video_duration"], "video_duration", _opt_float)
    srt = np.argsort(fvid, kind="stable")
    dup = np.flatnonzero(np.diff(fvid[srt]) == 0)
    if dup.size:
        i = int(srt[dup[0] + 1])
        raise ValueError(
            f"{_where(src, i, 'video_id')}: duplicate video_id {rows[i][cols['video_id']]}"
        )
    pos = np.minimum(np.searchsorted(fvid[srt], videos), max(len(rows) - 1, 0))
    found = fvid[srt][pos] == videos if rows else np.zeros(videos.size, dtype=bool)
    row = np.where(found, srt[pos] if rows else 0, -1)

    n_items = videos.size
    feat = np.zeros((n_items + 1, len(ITEM_FIELDS)), dtype=np.int32)
    vocab = []
    for f, name in enumerate(ITEM_FIELDS[:-1]):
        j = cols[_FIELD_COLUMN[name]]
        vals = [rows[r][j].strip() if r >= 0 else "" for r in row.tolist()]
        if name == "tag":
            vals = [v.split(",")[0].strip() for v in vals]
        feat[1:, f], v = _codes(vals)
        vocab.append(v)
    dur = np.where(found, fdur[np.maximum(row, 0)] if rows else np.nan, np.nan)
    dur = np.where(np.isfinite(dur) & (dur > 0), dur, log_dur_ms[1:])
    dur_ms = np.r_[0.0, dur]
    bucket = 1 + np.searchsorted(DURATION_BOUNDARIES, dur_ms / 1000.0, side="right")
    feat[:, -1] = np.where(dur_ms > 0, bucket, 0)
    feat[0] = 0
    vocab.append(len(DURATION_BOUNDARIES) + 2)
    return feat, vocab, dur_ms, int(n_items - found.sum())
