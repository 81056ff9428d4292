"""Per-user time splits and device partitions.

Each user's requests, ordered by time, are cut into **cloud history** (older logs the cloud
already has), **device-fresh** (recent logs that exist only on the device) and **test** (the
latest requests). With ``n`` requests and fractions ``(c, d, t)``, request ``r`` (0-based, in
time order) goes to cloud if ``r < floor(n c)``, else to device if ``r < floor(n (c + d))``, else
to test; so every user has at least one test request and a user with one request has only that.

The unit of the split is the **slate** (a page): requests of one page share candidates, and a
candidate exposed late in the page is a label of every earlier request of that page. Splitting
inside a page would put the same labelled exposure in training and test, so every request of a
page goes to the split of the page's last request (the later split wins; a user's last page is
always test).

One device per user: Flower partition id ``p`` is the ``p``-th user (by user index) that has at
least one request. The mapping depends only on the data, never on run order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shoal.config import ActivityConfig, SplitConfig
from shoal.datasets.requests import RequestLog

SPLITS = ("cloud", "device", "test")
CLOUD, DEVICE, TEST = 0, 1, 2
BUCKETS = ("tail", "torso", "head")


def assign_splits(log: RequestLog, cfg: SplitConfig) -> np.ndarray:
    """Split id of every request.

    Parameters
    ----------
    log : RequestLog
    cfg : SplitConfig
        Fractions of each user's requests, oldest first.

    Returns
    -------
    np.ndarray
        (R,) int8 with values ``CLOUD``, ``DEVICE``, ``TEST``.
    """
    R = log.n_requests
    order = np.lexsort((np.arange(R), log.req_time, log.req_user))  # by user, time, index
    users = log.req_user[order]
    first = np.r_[True, users[1:] != users[:-1]]
    group_start = np.maximum.accumulate(np.where(first, np.arange(R), 0))
    rank = np.arange(R) - group_start
    n = np.bincount(users, minlength=log.n_users)[users]
    cut1 = np.floor(n * cfg.cloud + 1e-9)
    cut2 = np.floor(n * (cfg.cloud + cfg.device) + 1e-9)
    split = np.where(rank < cut1, CLOUD, np.where(rank < cut2, DEVICE, TEST)).astype(np.int8)
    out = np.empty(R, dtype=np.int8)
    out[order] = split
    # a page goes to its last request's split: the latest split of any of its requests
    page_split = np.zeros(log.slate_item.shape[0], np.int8)
    np.maximum.at(page_split, log.req_slate, out)
    return page_split[log.req_slate]


def activity_buckets(log: RequestLog, cfg: ActivityConfig) -> tuple[np.ndarray, np.ndarray]:
    """Head / torso / tail bucket of every user by number of logged exposures.

    Returns
    -------
    bucket : np.ndarray
        (U,) int8 index into ``BUCKETS`` (0 tail, 1 torso, 2 head).
    thresholds : np.ndarray
        (2,) the exposure counts at the two quantiles: tail is ``< thresholds[0]``, head is
        ``>= thresholds[1]``.
    """
    act = log.user_exposures()
    active = act[act > 0] if np.any(act > 0) else act
    thr = np.quantile(active, cfg.quantiles) if active.size else np.zeros(2)
    bucket = np.where(act < thr[0], 0, np.where(act >= thr[1], 2, 1)).astype(np.int8)
    bucket[act == 0] = 0  # a user with no logged exposure is tail, whatever the quantiles
    return bucket, thr


@dataclass
class Partitions:
    """Requests of each device (user) and split, in time order.

    Parameters
    ----------
    log : RequestLog
    split : np.ndarray
        (R,) split ids from :func:`assign_splits`.
    """

    log: RequestLog
    split: np.ndarray

    def __post_init__(self) -> None:
        log = self.log
        if self.split.shape != (log.n_requests,):
            raise ValueError(f"split must have shape ({log.n_requests},), got {self.split.shape}")
        self._order = np.lexsort((np.arange(log.n_requests), log.req_time, log.req_user))
        counts = np.bincount(log.req_user, minlength=log.n_users)
        self._offsets = np.r_[0, np.cumsum(counts)]
        self.users = np.flatnonzero(counts > 0).astype(np.int64)
        """(P,) user index of each partition id."""

    @property
    def num_partitions(self) -> int:
        return int(self.users.shape[0])

    def user_of(self, partition_id: int) -> int:
        """User index of a Flower partition id."""
        if not 0 <= partition_id < self.num_partitions:
            raise ValueError(f"partition id {partition_id} out of range [0, {self.num_partitions})")
        return int(self.users[partition_id])

    def requests(self, partition_id: int, split: int | str | None = None) -> np.ndarray:
        """Request indices of one device, time-ordered, optionally of one split."""
        u = self.user_of(partition_id)
        idx = self._order[self._offsets[u] : self._offsets[u + 1]]
        if split is None:
            return idx
        s = SPLITS.index(split) if isinstance(split, str) else int(split)
        return idx[self.split[idx] == s]

    def of_split(self, split: int | str) -> np.ndarray:
        """All request indices of one split (every user), sorted by (user, time)."""
        s = SPLITS.index(split) if isinstance(split, str) else int(split)
        return self._order[self.split[self._order] == s]
