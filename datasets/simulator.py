"""Waterfall-feed simulator: the built-in dataset (see ``docs/simulator.md``).

>>> from shoal.config import SimConfig
>>> sim = Simulator(SimConfig(users=50, items=2000), seed=0)
>>> log = sim.generate()
>>> log.n_users
50

The same ``(config, seed)`` always gives the same world and the same log. The world's users can
also be replayed **online** against any ranking policy (:meth:`Simulator.evaluate_policy`), with
common random numbers so that two policies face the same draws.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from shoal.config import SimConfig
from shoal.datasets.requests import TRIGGERS, RequestLog
from shoal.datasets.schema import ActionSpec, Schema
from shoal.datasets.sim.engine import IE_ACTIONS, IPV_BINARY, LABELS, SessionRecord, run_sessions
from shoal.datasets.sim.world import N_BC_TYPES, N_GENDERS, World, cloud_page, make_world, sigmoid

SESSION_GAP = 3600.0  # seconds between a user's sessions at least
_DUR = (0.3, 0.6, 1.0, 1.5, 2.5, 4.0, 7.0, 12.0)
_IE_SPECS = (
    ActionSpec("exposure_duration", "bucket", _DUR, 0, "seconds the item was on screen"),
    ActionSpec("exposure_count", "bucket", (1.5, 2.5, 3.5, 5.5, 9.5), 0, "times exposed so far"),
    ActionSpec("scroll_speed", "bucket", (400, 600, 800, 1000, 1300, 1700), 0, "max px/s"),
    ActionSpec("scroll_duration", "bucket", (0.3, 0.45, 0.6, 0.8, 1.1, 1.5), 0, "seconds"),
    ActionSpec("scroll_count", "bucket", (1.5, 2.5, 3.5, 5.5), 0, "scrolls while exposed"),
    ActionSpec("delete_reason", "category", (), 5, "0 none; 1-4 reason of a long-press delete"),
)
_IPV_SPECS = (
    ActionSpec("ipv_duration", "bucket", (5, 10, 20, 40, 80, 160), 0, "seconds on the item page"),
) + tuple(ActionSpec(n, "binary", (), 2, f"{n} action on the item page") for n in IPV_BINARY)


def sim_schema(cfg: SimConfig) -> Schema:
    """Feature schema of simulated logs (EdgeRec's Table 1 feature system)."""
    assert tuple(a.name for a in _IE_SPECS) == IE_ACTIONS
    return Schema(
        item_fields=("category", "brand", "gender", "price_level", "age_level", "bc_type"),
        item_vocab=(
            cfg.categories + 1,
            cfg.brands + 1,
            N_GENDERS + 1,
            cfg.price_levels + 1,
            cfg.age_levels + 1,
            N_BC_TYPES + 1,
        ),
        score_names=("cloud_logit", "cloud_item_quality"),
        ie_actions=_IE_SPECS,
        ipv_actions=_IPV_SPECS,
        label_names=LABELS,
    )


class Simulator:
    """A seeded simulated population and its feed.

    Parameters
    ----------
    cfg : SimConfig
    seed : int
        Derives every random stream: world (``[seed, 0]``), session times (``[seed, 1]``),
        calibration (``[seed, 2]``) and the sessions' common random numbers (``seed``).
    """

    def __init__(self, cfg: SimConfig, seed: int = 0) -> None:
        self.cfg, self.seed = cfg, int(seed)
        self.world: World = make_world(cfg, np.random.default_rng([self.seed, 0]))
        self.world.bias = self._calibrate()

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this simulator exactly."""
        return {"cfg": dataclasses.asdict(self.cfg), "seed": self.seed, "bias": self.world.bias}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Simulator:
        sim = cls(SimConfig(**state["cfg"]), state["seed"])
        if not np.isclose(sim.world.bias, state["bias"]):
            raise ValueError("simulator state does not reproduce (different numpy version?)")
        return sim

    # ------------------------------------------------------------ calibration
    def _calibrate(self) -> float:
        """Click bias so the logged CTR is near ``cfg.target_ctr``.

        A closed-form fit on fresh pages (position-weighted expected CTR at session start)
        followed by one correction from a pilot run of the real session dynamics.
        """
        cfg, w = self.cfg, self.world
        rng = np.random.default_rng([self.seed, 2])
        pilot = rng.choice(cfg.users, size=min(cfg.users, 400), replace=False)
        items, _ = cloud_page(w, pilot, np.zeros((pilot.size, cfg.latent_dim), np.float32), rng)
        items = items[:, : cfg.page_size]
        r = w.static_utility(pilot, items)
        r += cfg.intent_weight * 0.3 * np.einsum("ld,lkd->lk", w.user_vec[pilot], w.item_vec[items])
        exam = w.examination(np.arange(cfg.page_size))[None, :]
        lo, hi = -15.0, 5.0
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if (exam * sigmoid(mid + r)).mean() < cfg.target_ctr else (lo, mid)
        w.bias = (lo + hi) / 2
        for it in range(2):
            rec = run_sessions(
                w, pilot, np.zeros(pilot.size), seed=self.seed + 7919 + it, record_truth=False
            )
            ctr = rec.lane_clicks.sum() / max(rec.lane_exposures.sum(), 1)
            ctr = float(np.clip(ctr, 1e-4, 0.9))
            w.bias += _logit(cfg.target_ctr) - _logit(ctr)
        return float(w.bias)

    # ------------------------------------------------------------ logged period
    def session_starts(self) -> tuple[np.ndarray, np.ndarray]:
        """(user, start time) of every session of the logged period, sorted by user then time."""
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, 1])
        n = self.world.user_sessions.astype(np.int64)
        user = np.repeat(np.arange(cfg.users), n)
        span = cfg.days * 86400.0
        gap = np.minimum(SESSION_GAP, span / (2.0 * n))  # (U,)
        free = span - n * gap
        raw = rng.random(user.size) * free[user]
        order = np.lexsort((raw, user))
        raw = raw[order]
        first = np.r_[0, np.cumsum(n)[:-1]]
        k = np.arange(user.size) - first[user]
        return user, raw + k * gap[user]

    def generate(self) -> RequestLog:
        """Play the logged period with the cloud order shown and return its request log."""
        user, start = self.session_starts()
        rec = run_sessions(self.world, user, start, seed=self.seed)
        info = {
            "source": "simulator",
            "seed": self.seed,
            "config": dataclasses.asdict(self.cfg),
            "click_bias": self.world.bias,
            "sessions": int(user.size),
        }
        return record_to_log(rec, self.world, sim_schema(self.cfg), info)

    # ------------------------------------------------------------ online evaluation
    def evaluate_policy(self, policy: Any, **kwargs: Any) -> dict[str, Any]:
        """Replay fresh sessions of the same users with ``policy`` reranking on device.

        See :func:`shoal.datasets.sim.online.evaluate_policy` for the arguments.
        """
        from shoal.datasets.sim.online import evaluate_policy

        return evaluate_policy(self, policy, **kwargs)


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def _sort_events(ev: dict[str, np.ndarray]) -> np.ndarray:
    return np.lexsort((np.arange(ev["user"].size), ev["time"], ev["user"]))


def history_end(
    ev_user: np.ndarray, ev_time: np.ndarray, q_user: np.ndarray, q_time: np.ndarray
) -> np.ndarray:
    """For events sorted by (user, time): one past the last event of ``q_user`` at or before
    ``q_time``, as a global index. (Q,) int64."""
    E = ev_user.size
    user = np.r_[ev_user, q_user]
    order = np.lexsort((np.r_[np.zeros(E), np.ones(q_user.size)], np.r_[ev_time, q_time], user))
    is_ev = order < E
    cum = np.cumsum(is_ev)
    out = np.empty(q_user.size, np.int64)
    out[order[~is_ev] - E] = cum[~is_ev]
    return out


def _exposure_counts(user: np.ndarray, item: np.ndarray) -> np.ndarray:
    """For time-sorted events: how many times (user, item) was exposed up to and including each."""
    E = user.size
    order = np.lexsort((np.arange(E), item, user))
    key_u, key_i = user[order], item[order]
    first = np.r_[True, (key_u[1:] != key_u[:-1]) | (key_i[1:] != key_i[:-1])]
    start = np.maximum.accumulate(np.where(first, np.arange(E), 0))
    out = np.empty(E, np.float32)
    out[order] = np.arange(E) - start + 1
    return out


def record_to_log(rec: SessionRecord, world: World, schema: Schema, info: dict) -> RequestLog:
    """Sort what the engine logged into a :class:`RequestLog`."""
    U = world.n_users
    ie = {k: v[_sort_events(rec.ie)] for k, v in rec.ie.items()}
    ie["act"][:, 1] = _exposure_counts(ie["user"], ie["item"])
    ipv = {k: v[_sort_events(rec.ipv)] for k, v in rec.ipv.items()}
    sl = rec.slates
    s_order = np.lexsort((sl["id"], sl["time"], sl["user"]))
    remap = np.empty(s_order.size, np.int64)
    remap[sl["id"][s_order]] = np.arange(s_order.size)
    rq = rec.requests
    r_order = np.lexsort((np.arange(rq["user"].size), rq["time"], rq["user"]))
    rq = {k: v[r_order] for k, v in rq.items()}
    W = sl["item"].shape[1]
    log = RequestLog(
        name="sim",
        schema=schema,
        item_feat=world.item_features(),
        user_key=np.arange(U, dtype=np.int64),
        ie_offsets=np.r_[0, np.cumsum(np.bincount(ie["user"], minlength=U))].astype(np.int64),
        ie_item=ie["item"].astype(np.int32),
        ie_time=ie["time"].astype(np.float64),
        ie_act=ie["act"].astype(np.float32),
        ipv_offsets=np.r_[0, np.cumsum(np.bincount(ipv["user"], minlength=U))].astype(np.int64),
        ipv_item=ipv["item"].astype(np.int32),
        ipv_time=ipv["time"].astype(np.float64),
        ipv_act=ipv["act"].astype(np.float32),
        slate_user=sl["user"][s_order].astype(np.int32),
        slate_item=sl["item"][s_order].astype(np.int32),
        slate_score=sl["score"][s_order].astype(np.float32),
        slate_label=sl["label"][s_order].astype(np.int8),
        slate_observed=sl["observed"][s_order].astype(bool),
        slate_len=np.full(s_order.size, W, np.int32),
        req_user=rq["user"].astype(np.int32),
        req_time=rq["time"].astype(np.float64),
        req_slate=remap[rq["slate"]].astype(np.int32),
        req_start=rq["start"].astype(np.int32),
        req_end=np.full(rq["user"].size, W, np.int32),
        req_ie_end=history_end(ie["user"], ie["time"], rq["user"], rq["time"]),
        req_ipv_end=history_end(ipv["user"], ipv["time"], rq["user"], rq["time"]),
        req_trigger=np.asarray(rq["trigger"], np.int8),
        req_truth=rq["truth"].astype(np.float16) if "truth" in rq else None,
        info=info,
    )
    assert TRIGGERS[:3] == ("click", "delete", "exposures")
    log.validate()
    return log
