"""Does the simulator carry the signals Shoal is about? Measured, not assumed.

``shoal experiment sim-signals`` (and the simulator tests) report:

* click-through rate and CTR by page position (position bias, monotone);
* long-tailed activity (share of exposures held by the top 10% of users, Gini);
* **behaviour signal**: the same logistic-regression probe with and without features computed
  from the device's IE/IPV sequences, GAUC on the test split;
* **personalization signal**: a global logistic model vs the same model fine-tuned per user on
  that user's own training requests, GAUC per activity bucket (head / torso / tail).

The probes are deliberately simple (linear, hand-made features) so they test the *data*, not a
model: if they see a gap, the signal is in the logs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shoal.config import ShoalConfig
from shoal.datasets.requests import RequestLog, RerankBatch
from shoal.datasets.splits import BUCKETS, Partitions, activity_buckets, assign_splits
from shoal.metrics import gauc


@dataclass
class Rows:
    """Labelled candidates flattened out of a batch."""

    x: np.ndarray  # (N, D) float64 features
    y: np.ndarray  # (N,) labels
    request: np.ndarray  # (N,) request index (GAUC group)
    user: np.ndarray  # (N,) user index


def _same(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, K) fraction of valid sequence entries of ``b`` (B, m) equal to candidate ``a`` (B, K)."""
    eq = (a[:, :, None] == b[:, None, :]) & mask[:, None, :]
    return eq.sum(-1) / np.maximum(mask.sum(-1), 1)[:, None]


def base_features(b: RerankBatch) -> list[np.ndarray]:
    """Candidate-only features: cloud scores and position (what a pointwise cloud model sees)."""
    return [b.cand_score[..., 0], b.cand_score[..., 1], np.log1p(b.cand_pos)]


def behaviour_features(b: RerankBatch) -> list[np.ndarray]:
    """Features from the device's IE / IPV sequences, matched to each candidate's category."""
    cat, ie_m, ipv_m = b.cand_feat[..., 0], b.ie_mask, b.ipv_mask
    ie_cat, ipv_cat = b.ie_feat[..., 0], b.ipv_feat[..., 0]
    same_ie = (cat[:, :, None] == ie_cat[:, None, :]) & ie_m[:, None, :]  # (B, K, m)
    dwell = b.ie_act[..., 0].astype(np.float64)  # exposure-duration bucket ids
    speed = b.ie_act[..., 2].astype(np.float64)
    recent = ie_m & (np.arange(ie_m.shape[1])[None, :] >= (b.ie_len - 10)[:, None])
    n_same = np.maximum(same_ie.sum(-1), 1)
    newest_click = np.take_along_axis(ipv_cat, np.maximum(b.ipv_len - 1, 0)[:, None], 1)
    recent_clicks = ipv_m & (np.arange(ipv_m.shape[1])[None, :] >= (b.ipv_len - 3)[:, None])
    fresh = (b.ipv_act[..., -1] <= 4) & ipv_m  # clicked within the last 5 minutes
    w_dwell = np.where(recent, dwell, 0.0)
    return [
        _same(cat, ie_cat, ie_m),
        _same(cat, np.where(recent, ie_cat, -1), recent),
        (same_ie * w_dwell[:, None, :]).sum(-1) / np.maximum(w_dwell.sum(-1), 1)[:, None],
        _same(cat, np.where(recent_clicks, ipv_cat, -1), recent_clicks)
        * recent_clicks.sum(-1)[:, None],
        ((cat[:, :, None] == ipv_cat[:, None, :]) & fresh[:, None, :]).any(-1).astype(np.float64),
        (same_ie * dwell[:, None, :]).sum(-1) / n_same,
        (same_ie * speed[:, None, :]).sum(-1) / n_same,
        _same(cat, ipv_cat, ipv_m),
        ((cat == newest_click) & (b.ipv_len > 0)[:, None]).astype(np.float64),
        _same(b.cand_feat[..., 1], b.ipv_feat[..., 1], ipv_m),
    ]


def personal_features(b: RerankBatch, price_levels: int) -> list[np.ndarray]:
    """Item attributes a user may weigh idiosyncratically (price, gender, age)."""
    f = b.cand_feat
    z_price = (f[..., 3] - (price_levels + 1) / 2) / (price_levels / 3.5)
    out = [z_price, z_price**2]
    out += [(f[..., 2] == g).astype(np.float64) for g in (2, 3)]
    out += [f[..., 4].astype(np.float64) / 8.0]
    return out


def to_rows(b: RerankBatch, feats: list[np.ndarray]) -> Rows:
    m = b.label_mask
    x = np.stack([np.asarray(f, np.float64)[m] for f in feats], axis=1)
    req = np.broadcast_to(b.request[:, None], m.shape)[m]
    user = np.broadcast_to(b.user[:, None], m.shape)[m]
    return Rows(x=x, y=b.click[m].astype(np.float64), request=req, user=user)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 200) -> np.ndarray:
    """Global logistic regression (Newton's method on standardized features + intercept)."""
    X = np.c_[np.ones(len(x)), x]
    w = np.zeros(X.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-X @ w))
        g = X.T @ (p - y) / len(y) + l2 * np.r_[0, w[1:]]
        h = (X * (p * (1 - p))[:, None]).T @ X / len(y) + l2 * np.eye(len(w))
        step = np.linalg.solve(h, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def finetune_per_user(
    x: np.ndarray, y: np.ndarray, user: np.ndarray, w0: np.ndarray, lr: float, steps: int, l2: float
) -> dict[int, np.ndarray]:
    """Per-user weights: gradient steps from the global ``w0`` with an L2 pull back toward it."""
    order = np.argsort(user, kind="stable")
    X, y, user = np.c_[np.ones(len(x)), x][order], y[order], user[order]
    users, first, counts = np.unique(user, return_index=True, return_counts=True)
    inv = np.repeat(np.arange(users.size), counts)
    W = np.tile(w0, (users.size, 1))
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(X * W[inv]).sum(1)))
        G = np.add.reduceat((p - y)[:, None] * X, first, axis=0)  # per-user gradient sums
        W -= lr * (G / counts[:, None] + l2 * (W - w0))
    return {int(u): W[i] for i, u in enumerate(users)}


def _score(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.c_[np.ones(len(x)), x] @ w


def _rows_for(log: RequestLog, idx: np.ndarray, cfg: ShoalConfig, which: str) -> Rows:
    b = log.batch(idx, cfg.seq.ie_len, cfg.seq.ipv_len)
    feats = base_features(b)
    if which in ("behaviour", "all"):
        feats += behaviour_features(b)
    if which in ("personal", "all"):
        feats += personal_features(b, cfg.sim.price_levels)
    return to_rows(b, feats)


def _standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mu, sd = train.mean(0), train.std(0) + 1e-9
    return [(a - mu) / sd for a in (train, *others)]


def behaviour_signal(log: RequestLog, cfg: ShoalConfig, max_train: int = 20000) -> dict:
    """Test GAUC of the probe without and with IE/IPV sequence features."""
    parts = Partitions(log, assign_splits(log, cfg.split))
    rng = np.random.default_rng([cfg.seed, 11])
    train = parts.of_split("cloud")
    train = np.r_[train, parts.of_split("device")]
    train = np.sort(rng.choice(train, size=min(max_train, train.size), replace=False))
    test = parts.of_split("test")
    out = {}
    for which in ("base", "behaviour"):
        tr, te = _rows_for(log, train, cfg, which), _rows_for(log, test, cfg, which)
        xtr, xte = _standardize(tr.x, te.x)
        w = fit_logistic(xtr, tr.y)
        out[f"gauc_{which}"] = gauc(_score(xte, w), te.y, te.request)
    out["gain"] = out["gauc_behaviour"] - out["gauc_base"]
    return out


def personalization_signal(log: RequestLog, cfg: ShoalConfig, steps: int = 100) -> dict:
    """Global probe vs the probe fine-tuned per user, test GAUC by activity bucket."""
    split = assign_splits(log, cfg.split)
    train = np.flatnonzero(split != 2)
    test = np.flatnonzero(split == 2)
    tr, te = _rows_for(log, train, cfg, "personal"), _rows_for(log, test, cfg, "personal")
    xtr, xte = _standardize(tr.x, te.x)
    w0 = fit_logistic(xtr, tr.y)
    per_user = finetune_per_user(xtr, tr.y, tr.user, w0, lr=0.5, steps=steps, l2=0.02)
    s_global = _score(xte, w0)
    s_personal = s_global.copy()
    for u, w in per_user.items():
        sel = te.user == u
        if sel.any():
            s_personal[sel] = _score(xte[sel], w)
    bucket, thr = activity_buckets(log, cfg.activity)
    out: dict = {"thresholds": thr.tolist(), "by_bucket": {}}
    for k, name in enumerate(BUCKETS):
        sel = bucket[te.user] == k
        g0, g1 = (
            gauc(s_global[sel], te.y[sel], te.request[sel]),
            gauc(s_personal[sel], te.y[sel], te.request[sel]),
        )
        out["by_bucket"][name] = {
            "users": int(np.unique(te.user[sel]).size),
            "gauc_global": g0,
            "gauc_finetuned": g1,
            "gap": g1 - g0,
        }
    out["gauc_global"] = gauc(s_global, te.y, te.request)
    out["gauc_finetuned"] = gauc(s_personal, te.y, te.request)
    return out


def position_ctr(log: RequestLog, width: int = 10) -> dict:
    """CTR by page-position bucket, and clicks over true relevance (the examination curve)."""
    click, pos = log.exposure_clicks()
    n_buckets = int(pos.max()) // width + 1 if pos.size else 0
    b = pos // width
    ctr = np.bincount(b, weights=click, minlength=n_buckets) / np.maximum(
        np.bincount(b, minlength=n_buckets), 1
    )
    return {"bucket_width": width, "ctr": ctr.tolist()}


def activity_stats(log: RequestLog) -> dict:
    """Long tail of activity: quantiles, top-10% share, Gini of exposures per user."""
    act = np.sort(log.user_exposures().astype(np.float64))
    n = act.size
    top = act[int(np.floor(0.9 * n)) :].sum() / max(act.sum(), 1)
    gini = (2 * np.arange(1, n + 1) - n - 1) @ act / (n * max(act.sum(), 1))
    q = np.quantile(act, [0.1, 0.5, 0.9, 0.99]).tolist()
    return {
        "quantiles_10_50_90_99": q,
        "mean": float(act.mean()),
        "top10_share": float(top),
        "gini": float(gini),
    }


def report(log: RequestLog, cfg: ShoalConfig) -> dict:
    """All signal checks on one log."""
    click, _ = log.exposure_clicks()
    return {
        "ctr": float(click.mean()),
        "position": position_ctr(log),
        "activity": activity_stats(log),
        "behaviour": behaviour_signal(log, cfg),
        "personalization": personalization_signal(log, cfg),
    }
