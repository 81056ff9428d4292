"""Summary statistics of a request log (what ``shoal data describe`` prints)."""

from __future__ import annotations

from typing import Any

import numpy as np

from shoal.config import ShoalConfig
from shoal.datasets.requests import TRIGGERS, RequestLog
from shoal.datasets.splits import BUCKETS, SPLITS, activity_buckets, assign_splits

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


def _q(x: np.ndarray) -> dict[str, float]:
    if x.size == 0:
        return {f"p{int(q * 100)}": float("nan") for q in QUANTILES}
    return {f"p{int(q * 100)}": float(v) for q, v in zip(QUANTILES, np.quantile(x, QUANTILES))}


def describe(log: RequestLog, cfg: ShoalConfig) -> dict[str, Any]:
    """Users, requests, CTR, activity and sequence-length quantiles, splits and buckets.

    Sequence lengths are those a model sees (capped at ``cfg.seq.ie_len`` / ``ipv_len``).
    """
    click, _ = log.exposure_clicks()
    u = log.req_user
    ie_len = np.minimum(log.req_ie_end - log.ie_offsets[u], cfg.seq.ie_len)
    ipv_len = np.minimum(log.req_ipv_end - log.ipv_offsets[u], cfg.seq.ipv_len)
    split = assign_splits(log, cfg.split)
    bucket, thr = activity_buckets(log, cfg.activity)
    n_req_user = np.bincount(u, minlength=log.n_users)
    return {
        "dataset": log.name,
        "users": log.n_users,
        "users_with_requests": int((n_req_user > 0).sum()),
        "items": log.n_items,
        "requests": log.n_requests,
        "exposures": int(log.ie_item.size),
        "page_views": int(log.ipv_item.size),
        "ctr": float(click.mean()) if click.size else float("nan"),
        "candidates_per_request": _q((log.req_end - log.req_start).astype(np.float64)),
        "requests_per_user": _q(n_req_user[n_req_user > 0].astype(np.float64)),
        "exposures_per_user": _q(log.user_exposures().astype(np.float64)),
        "ie_seq_len": _q(ie_len.astype(np.float64)),
        "ipv_seq_len": _q(ipv_len.astype(np.float64)),
        "triggers": {
            t: int(c) for t, c in zip(TRIGGERS, np.bincount(log.req_trigger, minlength=4))
        },
        "splits": {s: int(c) for s, c in zip(SPLITS, np.bincount(split, minlength=3))},
        "activity_thresholds": thr.tolist(),
        "activity_buckets": {b: int(c) for b, c in zip(BUCKETS, np.bincount(bucket, minlength=3))},
        "memory_mb": log.nbytes() / 2**20,
        "labels": list(log.schema.label_names),
    }
