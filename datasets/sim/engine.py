"""Lockstep session engine: plays many feed sessions at once, one exposure per step.

Each **lane** is one session of one user. All lanes advance together, one page slot per step,
so every operation is a numpy operation over the active lanes. A step: expose the item at the
lane's next display slot, draw click / delete from the world's utility, emit IE (and IPV)
actions, update the in-session state (intent moves toward a clicked item, category fatigue,
random intent drift), fire a rerank request at EdgeRec's triggers, then leave / turn the page.

Randomness is common across policies: step ``t`` draws its uniforms and normals for *all*
lanes from ``default_rng([seed, t])``, so two policies evaluated with the same seed see the same
draws in the same lane and step (common random numbers: an online A/B compares policies, not
luck). A policy (see :class:`ReRanker`) is asked at each trigger for scores of the remaining
candidates; the page's remaining slots are then shown in descending score order. Without a
policy the cloud order is shown: that is how the logged dataset is made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from shoal.datasets.sim.world import World, _unit, cloud_page, sample_categories, sigmoid

IE_ACTIONS = (
    "exposure_duration",
    "exposure_count",
    "scroll_speed",
    "scroll_duration",
    "scroll_count",
    "delete_reason",
)
IPV_BINARY = (
    "cart",
    "buy",
    "favorite",
    "comment",
    "select_sku",
    "ask",
    "service",
    "detail",
    "shop",
    "recommendation",
)
LABELS = ("click", "cart", "buy", "favorite", "delete")
DELETE_REASONS = 4
# Per IPV binary action: logit base and slope on the (clipped) utility.
_IPV_BASE = np.array([-2.2, -3.2, -2.4, -3.0, -1.8, -3.2, -3.5, -0.3, -2.2, -2.0], np.float32)
_IPV_SLOPE = np.array([0.8, 0.9, 0.7, 0.4, 0.6, 0.5, 0.3, 0.3, 0.5, 0.3], np.float32)
_TRIG_CLICK, _TRIG_DELETE, _TRIG_EXPOSURES = 0, 1, 2
_PAGE_CHUNK = 16384  # lanes per cloud-page call (bounds the (L, N, ...) temporaries)


class ReRanker(Protocol):
    """What the engine needs from an online policy."""

    def observe(
        self, kind: str, lanes: np.ndarray, items: np.ndarray, times: np.ndarray, acts: np.ndarray
    ) -> None:
        """New ``"ie"`` or ``"ipv"`` events of ``lanes`` (raw actions, as stored in a log)."""

    def rerank(
        self,
        lanes: np.ndarray,
        t: np.ndarray,
        items: np.ndarray,
        scores: np.ndarray,
        cloud_pos: np.ndarray,
        mask: np.ndarray,
    ) -> np.ndarray:
        """Scores (T, K) for the remaining candidates ``items`` (T, K); higher is shown first."""


@dataclass
class SessionRecord:
    """Everything the engine logged (event order = generation order, not yet sorted)."""

    ie: dict[str, np.ndarray] = field(default_factory=dict)  # user, item, time, act
    ipv: dict[str, np.ndarray] = field(default_factory=dict)  # user, item, time, act
    slates: dict[str, np.ndarray] = field(default_factory=dict)  # id, user, time, item, ...
    requests: dict[str, np.ndarray] = field(default_factory=dict)  # user, time, slate, ...
    lane_clicks: np.ndarray | None = None  # (L,) clicks per session
    lane_exposures: np.ndarray | None = None  # (L,)


class _Lists:
    """Append-only column store (lists of arrays, concatenated once at the end)."""

    def __init__(self) -> None:
        self.cols: dict[str, list[np.ndarray]] = {}

    def add(self, **cols: np.ndarray) -> None:
        for k, v in cols.items():
            self.cols.setdefault(k, []).append(v)

    def done(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.cols.items()}


def run_sessions(
    world: World,
    user: np.ndarray,
    start: np.ndarray,
    seed: int,
    policy: ReRanker | None = None,
    record_truth: bool = True,
) -> SessionRecord:
    """Play one session per lane.

    Parameters
    ----------
    world : World
        Calibrated world (``world.bias`` set).
    user : np.ndarray
        (L,) user index of each session.
    start : np.ndarray
        (L,) start time of each session in seconds.
    seed : int
        Seed of the common random numbers.
    policy : ReRanker, optional
        Reorders the remaining candidates at each trigger; None shows the cloud order.
    record_truth : bool
        Keep p(click | examined) of every candidate at each request.

    Returns
    -------
    SessionRecord
    """
    cfg = world.cfg
    L, N, P, d, C = user.shape[0], cfg.candidates, cfg.page_size, cfg.latent_dim, cfg.categories
    user = np.asarray(user, np.int64)
    t = np.asarray(start, np.float64).copy()
    active = np.ones(L, bool)
    slot = np.zeros(L, np.int32)
    page_no = np.zeros(L, np.int32)
    since = np.zeros(L, np.int32)
    fatigue = np.zeros((L, C + 1), np.float32)
    clicked_sum = np.zeros((L, d), np.float32)
    n_click = np.zeros(L, np.int32)
    n_exp = np.zeros(L, np.int32)
    pg_item = np.zeros((L, N), np.int32)
    pg_score = np.zeros((L, N, 2), np.float32)
    pg_static = np.zeros((L, N), np.float32)
    pg_intent = np.zeros((L, N), np.float32)
    pg_label = np.zeros((L, N, len(LABELS)), np.int8)
    pg_obs = np.zeros((L, N), bool)
    pg_display = np.broadcast_to(np.arange(N, dtype=np.int32), (L, N)).copy()
    pg_slate = np.full(L, -1, np.int64)
    pg_time = np.zeros(L, np.float64)
    n_slates = 0
    init_rng = np.random.default_rng([seed, 2**31 - 1])
    intent = world.cat_vec[_intent_category(world, user, init_rng.random(L))]
    ie, ipv, slates, reqs = _Lists(), _Lists(), _Lists(), _Lists()
    bias, k_trig = np.float32(world.bias), cfg.trigger_exposures

    def refresh_intent(lanes: np.ndarray) -> None:
        vec = world.item_vec[pg_item[lanes]]  # (T, N, d)
        pg_intent[lanes] = cfg.intent_weight * np.einsum("td,tnd->tn", intent[lanes], vec)

    def flush(lanes: np.ndarray) -> None:
        lanes = lanes[pg_slate[lanes] >= 0]
        if lanes.size == 0:
            return
        disp = pg_display[lanes]
        take = np.take_along_axis
        slates.add(
            id=pg_slate[lanes],
            user=user[lanes],
            time=pg_time[lanes],
            item=take(pg_item[lanes], disp, 1),
            score=take(pg_score[lanes], disp[..., None], 1),
            label=take(pg_label[lanes], disp[..., None], 1),
            observed=take(pg_obs[lanes], disp, 1),
            cloud_pos=disp,
        )
        pg_slate[lanes] = -1

    step = 0
    while active.any():
        rng = np.random.default_rng([seed, step])
        U = rng.random((L, 6), dtype=np.float32)  # click, delete, leave, drift, cat, continue
        Z = rng.standard_normal((L, 5), dtype=np.float32)
        a = np.flatnonzero(active)
        # ---- new pages (cloud call) ----
        new = a[slot[a] == 0]
        if new.size:
            flush(new)
            mean_click = clicked_sum[new] / np.maximum(n_click[new], 1)[:, None]
            for lo in range(0, new.size, _PAGE_CHUNK):
                ln = new[lo : lo + _PAGE_CHUNK]
                items, scores = cloud_page(world, user[ln], mean_click[lo : lo + _PAGE_CHUNK], rng)
                pg_item[ln], pg_score[ln] = items, scores
                pg_static[ln] = world.static_utility(user[ln], items)
                refresh_intent(ln)
            pg_label[new], pg_obs[new] = 0, False
            pg_display[new] = np.arange(N, dtype=np.int32)
            pg_slate[new] = n_slates + np.arange(new.size)
            pg_time[new] = t[new]
            n_slates += new.size
        # ---- expose the item at the next slot ----
        s = slot[a]
        pos = pg_display[a, s]
        item = pg_item[a, pos]
        cat = world.item_cat[item]
        r = pg_static[a, pos] + pg_intent[a, pos] - cfg.fatigue * fatigue[a, cat]
        p_rel = sigmoid(bias + r)
        click = U[a, 0] < world.examination(s) * p_rel
        p_del = 0.25 * sigmoid(-3.0 * (r + 2.5))
        delete = ~click & (U[a, 1] < p_del)
        rc = np.clip(r, -3.0, 3.0)
        z = Z[a]
        act = np.zeros((a.size, len(IE_ACTIONS)), np.float32)
        act[:, 0] = np.exp(np.log(1.2) + 0.45 * rc + 0.35 * z[:, 0])  # exposure duration (s)
        act[:, 2] = np.exp(np.log(900.0) - 0.35 * rc + 0.3 * z[:, 1])  # scroll speed (px/s)
        act[:, 3] = np.exp(np.log(0.6) + 0.3 * rc + 0.3 * z[:, 2])  # scroll duration (s)
        act[:, 4] = 1 + np.floor(np.exp(0.2 + 0.35 * rc + 0.4 * z[:, 3]))  # scroll count
        reason = 1 + np.minimum((U[a, 4] * DELETE_REASONS).astype(np.int32), DELETE_REASONS - 1)
        act[:, 5] = np.where(delete, reason, 0)
        t[a] += act[:, 0] + act[:, 3]
        ie.add(user=user[a], item=item.astype(np.int32), time=t[a], act=act)
        pg_obs[a, pos] = True
        pg_label[a, pos, 0] = click
        pg_label[a, pos, 4] = delete
        n_exp[a] += 1
        if policy is not None:
            policy.observe("ie", a, item, t[a], act)
        fatigue[a, cat] += np.where(delete, 3.0, 1.0).astype(np.float32)
        # ---- clicks: page view, finer labels, intent moves toward the clicked item ----
        c = a[click]
        if c.size:
            ci, rcc = item[click], rc[click]
            dur = np.exp(np.log(25.0) + 0.5 * rcc + 0.5 * z[click, 4])
            logits = _IPV_BASE + _IPV_SLOPE * rcc[:, None]
            logits[:, :2] -= 0.5 * (world.user_price[user[c]] < 0)[:, None]
            flags = (rng.random((c.size, len(IPV_BINARY))) < sigmoid(logits)).astype(np.float32)
            t[c] += dur
            ipv_act = np.concatenate([dur[:, None].astype(np.float32), flags], axis=1)
            ipv.add(user=user[c], item=ci, time=t[c], act=ipv_act)
            if policy is not None:
                policy.observe("ipv", c, ci, t[c], ipv_act)
            pg_label[c, pos[click], 1:4] = flags[:, :3].astype(np.int8)
            intent[c] = _unit(0.5 * intent[c] + 0.5 * world.item_vec[ci])
            clicked_sum[c] += world.item_vec[ci]
            n_click[c] += 1
        # ---- intent drift (a new need, device-only) ----
        drift = a[U[a, 3] < cfg.intent_drift]
        if drift.size:
            intent[drift] = world.cat_vec[_intent_category(world, user[drift], U[drift, 4])]
        changed = np.union1d(c, drift)
        if changed.size:
            refresh_intent(changed)
        # ---- triggers: click, delete, or k exposures without a click ----
        since[a] += 1
        trig = click | delete | (since[a] >= k_trig)
        since[a[trig]] = 0
        fire = trig & (s + 1 < P)
        if fire.any():
            f = a[fire]
            kind = np.where(
                click[fire], _TRIG_CLICK, np.where(delete[fire], _TRIG_DELETE, _TRIG_EXPOSURES)
            )
            if policy is not None:
                _rerank(policy, f, s[fire] + 1, t, pg_item, pg_score, pg_display)
            cols = dict(user=user[f], time=t[f], slate=pg_slate[f], start=s[fire] + 1, trigger=kind)
            if record_truth:
                disp = pg_display[f]
                cat_all = world.item_cat[pg_item[f]]
                u_all = pg_static[f] + pg_intent[f]
                u_all -= cfg.fatigue * np.take_along_axis(fatigue[f], cat_all, axis=1)
                p_all = sigmoid(bias + u_all)
                cols["truth"] = np.take_along_axis(p_all, disp, axis=1).astype(np.float16)
            reqs.add(**cols)
        # ---- leave, or turn the page ----
        leave = U[a, 2] < np.where(click, 0.5 * cfg.leave_prob, cfg.leave_prob)
        page_end = s + 1 >= P
        go_on = (U[a, 5] < cfg.continue_prob) & (page_no[a] + 1 < cfg.max_pages)
        stop = leave | (page_end & ~go_on)
        active[a[stop]] = False
        flush(a[stop])
        slot[a] = np.where(page_end, 0, s + 1)
        page_no[a] += page_end
        fatigue[a[page_end]] *= 0.5  # a new page partly refreshes attention
        step += 1
    rec = SessionRecord(ie=ie.done(), ipv=_done_or_empty(ipv, len(IPV_BINARY) + 1))
    rec.slates, rec.requests = slates.done(), _requests_or_empty(reqs, N)
    rec.lane_clicks, rec.lane_exposures = n_click, n_exp
    return rec


def _intent_category(world: World, users: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Session intent: mostly a long-term interest, sometimes a brand-new need."""
    prob = 0.8 * world.user_interest[users] + 0.2 / world.cfg.categories
    prob[:, 0] = 0
    return sample_categories(prob, u)


def _rerank(
    policy: ReRanker,
    f: np.ndarray,
    first: np.ndarray,
    t: np.ndarray,
    pg_item: np.ndarray,
    pg_score: np.ndarray,
    pg_display: np.ndarray,
) -> None:
    """Ask the policy to order the remaining display slots ``[first, N)`` of lanes ``f``."""
    N = pg_item.shape[1]
    K = N - int(first.min())
    kk = np.arange(K)[None, :]
    mask = kk < (N - first)[:, None]
    slots = np.where(mask, first[:, None] + kk, N - 1)
    cloud_pos = np.take_along_axis(pg_display[f], slots, axis=1)  # (T, K)
    items = np.where(mask, np.take_along_axis(pg_item[f], cloud_pos, axis=1), 0)
    scores = np.take_along_axis(pg_score[f], cloud_pos[..., None], axis=1) * mask[..., None]
    pscore = np.asarray(policy.rerank(f, t[f], items, scores, cloud_pos, mask), np.float64)
    if pscore.shape != items.shape or not np.all(np.isfinite(pscore[mask])):
        raise ValueError(
            f"policy returned scores of shape {pscore.shape} (expected {items.shape})"
            " or non-finite scores"
        )
    order = np.argsort(np.where(mask, -pscore, np.inf), axis=1, kind="stable")
    new = np.take_along_axis(cloud_pos, order, axis=1)  # (T, K) best first, padding last
    rel = np.arange(N)[None, :] - first[:, None]  # (T, N) slot relative to the first free one
    disp = pg_display[f]
    pg_display[f] = np.where(rel >= 0, np.take_along_axis(new, np.clip(rel, 0, K - 1), 1), disp)


def _done_or_empty(lists: _Lists, n_act: int) -> dict[str, np.ndarray]:
    if lists.cols:
        return lists.done()
    return {
        "user": np.zeros(0, np.int64),
        "item": np.zeros(0, np.int32),
        "time": np.zeros(0),
        "act": np.zeros((0, n_act), np.float32),
    }


def _requests_or_empty(lists: _Lists, n: int) -> dict[str, np.ndarray]:
    if lists.cols:
        return lists.done()
    return {
        "user": np.zeros(0, np.int64),
        "time": np.zeros(0),
        "slate": np.zeros(0, np.int64),
        "start": np.zeros(0, np.int32),
        "trigger": np.zeros(0, np.int64),
        "truth": np.zeros((0, n), np.float16),
    }
