"""Online evaluation: replay the simulated users with any reranking policy on the device.

A **policy** is any callable ``policy(batch: RerankBatch) -> scores`` with ``scores`` of shape
``(B, K)``; at each trigger the remaining page slots are filled in descending score order. The
batch has exactly the layout of an offline batch from :meth:`RequestLog.batch` (labels are
unknown online, so ``label_mask`` is all False), so a model trained offline runs online as is.

Sessions are fresh ones after the logged period. Each lane's behaviour history starts from the
user's logged events (pass the log) and grows with what happens online. Two policies evaluated
with the same ``seed`` face the same random draws (common random numbers), so their difference
is due to the policies, not to luck.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from shoal.datasets.requests import RequestLog, RerankBatch
from shoal.datasets.schema import ActionSpec, Schema
from shoal.datasets.sim.engine import run_sessions

if TYPE_CHECKING:
    from shoal.datasets.simulator import Simulator

Policy = Callable[[RerankBatch], np.ndarray]


class _Ring:
    """Last ``cap`` events of every lane (oldest first), as an offline batch would hold them."""

    def __init__(self, lanes: int, cap: int, n_act: int) -> None:
        self.item = np.zeros((lanes, cap), np.int32)
        self.time = np.zeros((lanes, cap), np.float64)
        self.act = np.zeros((lanes, cap, n_act), np.float32)
        self.len = np.zeros(lanes, np.int32)

    def push(self, lanes: np.ndarray, item: np.ndarray, time: np.ndarray, act: np.ndarray) -> None:
        cap = self.item.shape[1]
        full = lanes[self.len[lanes] == cap]
        for arr in (self.item, self.time, self.act):
            arr[full] = np.roll(arr[full], -1, axis=1)
        slot = np.minimum(self.len[lanes], cap - 1)
        self.item[lanes, slot], self.time[lanes, slot], self.act[lanes, slot] = item, time, act
        self.len[lanes] = np.minimum(self.len[lanes] + 1, cap)

    def load(self, lanes: np.ndarray, log: RequestLog, pre: str, users: np.ndarray) -> None:
        """Fill from each user's last logged events."""
        off, cap = getattr(log, f"{pre}_offsets"), self.item.shape[1]
        end = off[users + 1]
        start = np.maximum(off[users], end - cap)
        length = (end - start).astype(np.int32)
        jj = np.arange(cap)[None, :]
        mask = jj < length[:, None]
        ev = np.where(mask, start[:, None] + jj, 0)
        self.item[lanes] = np.where(mask, getattr(log, f"{pre}_item")[ev], 0)
        self.time[lanes] = np.where(mask, getattr(log, f"{pre}_time")[ev], 0)
        self.act[lanes] = getattr(log, f"{pre}_act")[ev] * mask[..., None]
        self.len[lanes] = length

    def gather(
        self, lanes: np.ndarray, t: np.ndarray, actions: tuple[ActionSpec, ...], decay: ActionSpec
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        length = self.len[lanes]
        mask = np.arange(self.item.shape[1])[None, :] < length[:, None]
        raw = self.act[lanes]
        cols = [a.bucketize(raw[..., i]) for i, a in enumerate(actions)]
        cols.append(decay.bucketize(t[:, None] - self.time[lanes]))
        act = (np.stack(cols, axis=-1) * mask[..., None]).astype(np.int32)
        return np.where(mask, self.item[lanes], 0).astype(np.int32), act, length


class _OnlineReRanker:
    """Adapts a batch policy to the engine's :class:`~shoal.datasets.sim.engine.ReRanker`."""

    def __init__(
        self,
        policy: Policy,
        schema: Schema,
        item_feat: np.ndarray,
        user: np.ndarray,
        ie_len: int,
        ipv_len: int,
        history: RequestLog | None,
    ) -> None:
        self.policy, self.schema, self.item_feat, self.user = policy, schema, item_feat, user
        L = user.shape[0]
        self.ie = _Ring(L, ie_len, len(schema.ie_actions))
        self.ipv = _Ring(L, ipv_len, len(schema.ipv_actions))
        self.calls = 0
        if history is not None:
            lanes = np.arange(L)
            self.ie.load(lanes, history, "ie", user)
            self.ipv.load(lanes, history, "ipv", user)

    def observe(
        self, kind: str, lanes: np.ndarray, items: np.ndarray, times: np.ndarray, acts: np.ndarray
    ) -> None:
        ring = self.ie if kind == "ie" else self.ipv
        if kind == "ie":  # exposure count: times this item is in the kept history, plus one
            acts = acts.copy()
            acts[:, 1] = 1 + ((ring.item[lanes] == items[:, None]).sum(1))
        ring.push(lanes, items, times, acts)

    def rerank(
        self,
        lanes: np.ndarray,
        t: np.ndarray,
        items: np.ndarray,
        scores: np.ndarray,
        cloud_pos: np.ndarray,
        mask: np.ndarray,
    ) -> np.ndarray:
        sch, decay = self.schema, self.schema.decay_action
        ie_item, ie_act, ie_len = self.ie.gather(lanes, t, sch.ie_actions, decay)
        ipv_item, ipv_act, ipv_len = self.ipv.gather(lanes, t, sch.ipv_actions, decay)
        B, K = items.shape
        batch = RerankBatch(
            request=np.full(B, -1, np.int64),
            user=self.user[lanes].astype(np.int32),
            cand_item=items.astype(np.int32),
            cand_feat=self.item_feat[items],
            cand_score=scores.astype(np.float32),
            cand_pos=np.where(mask, cloud_pos, 0).astype(np.int32),
            cand_mask=mask,
            label=np.zeros((B, K, len(sch.label_names)), np.int8),
            label_mask=np.zeros((B, K), bool),
            ie_item=ie_item,
            ie_feat=self.item_feat[ie_item],
            ie_act=ie_act,
            ie_len=ie_len,
            ipv_item=ipv_item,
            ipv_feat=self.item_feat[ipv_item],
            ipv_act=ipv_act,
            ipv_len=ipv_len,
        )
        self.calls += 1
        return np.asarray(self.policy(batch))


def evaluate_policy(
    sim: Simulator,
    policy: Policy | None,
    users: np.ndarray | None = None,
    sessions: int = 1,
    seed: int | None = None,
    history: RequestLog | None = None,
    ie_len: int = 50,
    ipv_len: int = 20,
) -> dict[str, Any]:
    """Play fresh sessions with ``policy`` reranking at every trigger.

    Parameters
    ----------
    sim : Simulator
    policy : callable or None
        ``policy(RerankBatch) -> (B, K) scores``; None shows the cloud order (the baseline).
    users : np.ndarray, optional
        User indices to replay (default: all).
    sessions : int
        Sessions per user, started after the logged period.
    seed : int, optional
        Seed of the common random numbers (default: the simulator's seed + 1); use the same
        seed for every policy of one comparison.
    history : RequestLog, optional
        The logged period (``sim.generate()``): seeds each user's behaviour history.
    ie_len, ipv_len : int
        Sequence caps of the batches given to the policy.

    Returns
    -------
    dict
        ``ctr``, ``clicks``, ``exposures``, ``sessions``, ``clicks_per_session``, ``rerank_calls``
        and ``user_clicks`` / ``user_exposures`` (per replayed user, aligned with ``users``).
    """
    from shoal.datasets.simulator import SESSION_GAP, sim_schema

    cfg = sim.cfg
    users = np.arange(cfg.users) if users is None else np.asarray(users, np.int64)
    if users.size and (users.min() < 0 or users.max() >= cfg.users):
        raise ValueError(f"users must be in [0, {cfg.users})")
    if sessions < 1:
        raise ValueError(f"sessions must be >= 1, got {sessions}")
    lane_user = np.repeat(users, sessions)
    k = np.tile(np.arange(sessions), users.size)
    start = cfg.days * 86400.0 + SESSION_GAP * (1 + k)
    seed = sim.seed + 1 if seed is None else int(seed)
    wrapper = None
    if policy is not None:
        wrapper = _OnlineReRanker(
            policy, sim_schema(cfg), sim.world.item_features(), lane_user, ie_len, ipv_len, history
        )
    rec = run_sessions(sim.world, lane_user, start, seed=seed, policy=wrapper, record_truth=False)
    clicks = rec.lane_clicks.reshape(users.size, sessions).sum(1)
    exposures = rec.lane_exposures.reshape(users.size, sessions).sum(1)
    return {
        "ctr": float(clicks.sum() / max(exposures.sum(), 1)),
        "clicks": int(clicks.sum()),
        "exposures": int(exposures.sum()),
        "sessions": int(lane_user.size),
        "clicks_per_session": float(clicks.sum() / max(lane_user.size, 1)),
        "rerank_calls": 0 if wrapper is None else wrapper.calls,
        "user_clicks": clicks,
        "user_exposures": exposures,
    }
