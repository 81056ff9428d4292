"""Rerank requests stored compactly, and their gathering into padded model batches.

A **rerank request** is one moment on one device: the still-unexposed candidates of the
current page (in cloud order), the device's item-exposure (IE) and item-page-view (IPV)
behaviour sequences up to that moment, and a label per candidate.

Storage avoids copying what requests share (see ``docs/data-format.md``):

* behaviour events are stored once per user, time-ordered, in CSR form (``ie_offsets``);
  a request only stores the end index of its history (``req_ie_end``), and a batch takes the
  last ``m`` events before it;
* candidates live in **slates** (a page the cloud sent, or a window of a real log); a request
  points at a slate and the slice ``[req_start, req_end)`` of it that is still unexposed.

With the simulator's defaults a request costs about 60 bytes plus its share of slates and
events (about 1.5 kB per slate), so a million requests take well under a gigabyte.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from shoal.datasets.schema import Schema

TRIGGERS = ("click", "delete", "exposures", "window")
"""Why a request fired: a click, a delete (long press), k exposures without a click, or a
fixed window of a real log (KuaiRand)."""

# name -> (dtype, number of dimensions); the contract checked on load and by ``validate``.
ARRAY_SPEC: dict[str, tuple[str, int]] = {
    "item_feat": ("int32", 2),
    "user_key": ("int64", 1),
    "ie_offsets": ("int64", 1),
    "ie_item": ("int32", 1),
    "ie_time": ("float64", 1),
    "ie_act": ("float32", 2),
    "ipv_offsets": ("int64", 1),
    "ipv_item": ("int32", 1),
    "ipv_time": ("float64", 1),
    "ipv_act": ("float32", 2),
    "slate_user": ("int32", 1),
    "slate_item": ("int32", 2),
    "slate_score": ("float32", 3),
    "slate_label": ("int8", 3),
    "slate_observed": ("bool", 2),
    "slate_len": ("int32", 1),
    "req_user": ("int32", 1),
    "req_time": ("float64", 1),
    "req_slate": ("int32", 1),
    "req_start": ("int32", 1),
    "req_end": ("int32", 1),
    "req_ie_end": ("int64", 1),
    "req_ipv_end": ("int64", 1),
    "req_trigger": ("int8", 1),
}
OPTIONAL_ARRAYS: dict[str, tuple[str, int]] = {"req_truth": ("float16", 2)}


@dataclass
class RerankBatch:
    """Padded arrays for ``B`` requests; ``K`` candidates, ``m``/``n`` behaviour slots.

    All categorical ids use 0 for padding. Sequences are left-aligned: position ``0`` is the
    oldest kept event and ``*_len - 1`` the newest; masks are True on real entries.
    """

    request: np.ndarray  # (B,) int64  request index in the log
    user: np.ndarray  # (B,) int32  user index
    cand_item: np.ndarray  # (B, K) int32
    cand_feat: np.ndarray  # (B, K, F) int32  item fields
    cand_score: np.ndarray  # (B, K, S) float32  cloud scores
    cand_pos: np.ndarray  # (B, K) int32  cloud position in the slate (0-based)
    cand_mask: np.ndarray  # (B, K) bool
    label: np.ndarray  # (B, K, L) int8
    label_mask: np.ndarray  # (B, K) bool  candidate was exposed later, label observed
    ie_item: np.ndarray  # (B, m) int32
    ie_feat: np.ndarray  # (B, m, F) int32
    ie_act: np.ndarray  # (B, m, A_ie + 1) int32  bucket ids, last column time-since
    ie_len: np.ndarray  # (B,) int32
    ipv_item: np.ndarray  # (B, n) int32
    ipv_feat: np.ndarray  # (B, n, F) int32
    ipv_act: np.ndarray  # (B, n, A_ipv + 1) int32
    ipv_len: np.ndarray  # (B,) int32
    truth: np.ndarray | None = None  # (B, K) float32  simulator's p(click | examined)

    @property
    def click(self) -> np.ndarray:
        """(B, K) int8 click labels."""
        return self.label[..., 0]

    @property
    def ie_mask(self) -> np.ndarray:
        """(B, m) bool."""
        return np.arange(self.ie_item.shape[1])[None, :] < self.ie_len[:, None]

    @property
    def ipv_mask(self) -> np.ndarray:
        """(B, n) bool."""
        return np.arange(self.ipv_item.shape[1])[None, :] < self.ipv_len[:, None]

    def __len__(self) -> int:
        return int(self.request.shape[0])


@dataclass
class RequestLog:
    """A dataset of rerank requests (see module docstring for the layout).

    ``U`` users, ``I`` items (catalog rows ``1..I``; row 0 is padding), ``E`` exposure events,
    ``V`` page-view events, ``S`` slates of width ``W``, ``R`` requests. Events, slates and
    requests are sorted by (user, time).
    """

    name: str
    schema: Schema
    item_feat: np.ndarray  # (I + 1, F) int32
    user_key: np.ndarray  # (U,) int64  the source's user id
    ie_offsets: np.ndarray  # (U + 1,) int64  user u's IE events: [ie_offsets[u], ie_offsets[u+1])
    ie_item: np.ndarray  # (E,) int32
    ie_time: np.ndarray  # (E,) float64  seconds
    ie_act: np.ndarray  # (E, A_ie) float32  raw action values
    ipv_offsets: np.ndarray  # (U + 1,) int64
    ipv_item: np.ndarray  # (V,) int32
    ipv_time: np.ndarray  # (V,) float64
    ipv_act: np.ndarray  # (V, A_ipv) float32
    slate_user: np.ndarray  # (S,) int32
    slate_item: np.ndarray  # (S, W) int32  cloud order
    slate_score: np.ndarray  # (S, W, n_scores) float32
    slate_label: np.ndarray  # (S, W, L) int8
    slate_observed: np.ndarray  # (S, W) bool  position was exposed in the log
    slate_len: np.ndarray  # (S,) int32
    req_user: np.ndarray  # (R,) int32
    req_time: np.ndarray  # (R,) float64
    req_slate: np.ndarray  # (R,) int32
    req_start: np.ndarray  # (R,) int32  first candidate's slate position
    req_end: np.ndarray  # (R,) int32  one past the last candidate's slate position
    req_ie_end: np.ndarray  # (R,) int64  history = IE events before this global index
    req_ipv_end: np.ndarray  # (R,) int64
    req_trigger: np.ndarray  # (R,) int8  index into TRIGGERS
    req_truth: np.ndarray | None = None  # (R, W) float16  p(click|examined) at request time
    info: dict | None = None  # provenance: generator config, source files, seed

    # ------------------------------------------------------------------ sizes
    @property
    def n_users(self) -> int:
        return int(self.user_key.shape[0])

    @property
    def n_items(self) -> int:
        """Real items (catalog rows minus the padding row)."""
        return int(self.item_feat.shape[0] - 1)

    @property
    def n_requests(self) -> int:
        return int(self.req_user.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """All arrays by name (optional ones only when present)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                out[f.name] = v
        return out

    def nbytes(self) -> int:
        """Total bytes of all arrays."""
        return int(sum(a.nbytes for a in self.arrays().values()))

    def user_exposures(self) -> np.ndarray:
        """(U,) number of logged exposures per user (the activity measure)."""
        return np.diff(self.ie_offsets)

    def exposure_clicks(self) -> tuple[np.ndarray, np.ndarray]:
        """Click label and cloud position of every observed slate position.

        Returns
        -------
        click : np.ndarray
            (N,) int8, one entry per exposed slate position.
        position : np.ndarray
            (N,) int32, its 0-based position in the slate.
        """
        obs = self.slate_observed
        pos = np.broadcast_to(np.arange(obs.shape[1], dtype=np.int32), obs.shape)
        return self.slate_label[..., 0][obs], pos[obs]

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Check dtypes, shapes and cross-references; raise ``ValueError`` naming the problem."""
        arrays = self.arrays()
        for name, (dtype, ndim) in {**ARRAY_SPEC, **OPTIONAL_ARRAYS}.items():
            if name not in arrays:
                if name in ARRAY_SPEC:
                    raise ValueError(f"{self.name}: array {name!r} is missing")
                continue
            a = arrays[name]
            if a.dtype != np.dtype(dtype) or a.ndim != ndim:
                raise ValueError(
                    f"{self.name}: array {name!r} must be {dtype} with {ndim} dims, "
                    f"got {a.dtype} with shape {a.shape}"
                )
        sch = self.schema
        U, S, W = self.n_users, self.slate_item.shape[0], self.slate_item.shape[1]
        _expect(self.item_feat.shape[1] == len(sch.item_fields), self, "item_feat columns")
        _expect(self.ie_act.shape[1] == len(sch.ie_actions), self, "ie_act columns")
        _expect(self.ipv_act.shape[1] == len(sch.ipv_actions), self, "ipv_act columns")
        _expect(self.slate_score.shape[:2] == (S, W), self, "slate_score shape")
        _expect(self.slate_score.shape[2] == len(sch.score_names), self, "slate_score scores")
        _expect(self.slate_label.shape == (S, W, len(sch.label_names)), self, "slate_label")
        _expect(self.slate_observed.shape == (S, W), self, "slate_observed shape")
        for pre, n in (("ie", self.ie_item.shape[0]), ("ipv", self.ipv_item.shape[0])):
            off = getattr(self, f"{pre}_offsets")
            _expect(off.shape == (U + 1,), self, f"{pre}_offsets length (U + 1)")
            _expect(off[0] == 0 and off[-1] == n, self, f"{pre}_offsets bounds")
            _expect(bool(np.all(np.diff(off) >= 0)), self, f"{pre}_offsets non-decreasing")
            for arr in ("time", "act"):
                _expect(getattr(self, f"{pre}_{arr}").shape[0] == n, self, f"{pre}_{arr} length")
        for name in ("ie_item", "ipv_item", "slate_item"):
            a = getattr(self, name)
            _expect(a.size == 0 or (a.min() >= 0 and a.max() <= self.n_items), self, f"{name} ids")
        for j, v in enumerate(sch.item_vocab):
            col = self.item_feat[:, j]
            _expect(col.min() >= 0 and col.max() < v, self, f"item field {sch.item_fields[j]!r}")
        R = self.n_requests
        for name in ARRAY_SPEC:
            if name.startswith("req_"):
                _expect(getattr(self, name).shape[0] == R, self, f"{name} length")
        _expect(
            R == 0 or (self.req_slate.min() >= 0 and self.req_slate.max() < S), self, "req_slate"
        )
        if R:
            _expect(
                bool(np.all(self.req_user == self.slate_user[self.req_slate])), self, "req_user"
            )
            ok = (0 <= self.req_start) & (self.req_start < self.req_end)
            ok &= self.req_end <= self.slate_len[self.req_slate]
            _expect(bool(ok.all()), self, "candidate slice [req_start, req_end)")
            u = self.req_user
            ok = (self.ie_offsets[u] <= self.req_ie_end) & (
                self.req_ie_end <= self.ie_offsets[u + 1]
            )
            ok &= self.ipv_offsets[u] <= self.req_ipv_end
            ok &= self.req_ipv_end <= self.ipv_offsets[u + 1]
            _expect(bool(ok.all()), self, "history end indices within the user's events")
            _expect(bool(np.all(self.req_trigger < len(TRIGGERS))), self, "req_trigger")
        if self.req_truth is not None:
            _expect(self.req_truth.shape == (R, W), self, "req_truth shape (R, W)")

    # ------------------------------------------------------------------ gather
    def batch(self, idx: np.ndarray, ie_len: int = 50, ipv_len: int = 20) -> RerankBatch:
        """Gather requests into padded arrays.

        Parameters
        ----------
        idx : np.ndarray
            (B,) request indices.
        ie_len, ipv_len : int
            Caps m and n of the behaviour sequences (the newest events are kept).

        Returns
        -------
        RerankBatch
            ``K`` is the longest candidate list among the ``B`` requests.
        """
        idx = np.asarray(idx, dtype=np.int64)
        if idx.ndim != 1:
            raise ValueError(f"idx must be 1-D, got shape {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_requests):
            raise ValueError(f"request index out of range [0, {self.n_requests})")
        slate = self.req_slate[idx]
        start, end = self.req_start[idx], self.req_end[idx]
        k_len = end - start
        K = int(k_len.max()) if idx.size else 0
        kk = np.arange(K)[None, :]
        cand_mask = kk < k_len[:, None]  # (B, K)
        pos = np.where(cand_mask, start[:, None] + kk, 0)  # (B, K) slate positions
        rows = slate[:, None]
        cand_item = np.where(cand_mask, self.slate_item[rows, pos], 0)
        label = self.slate_label[rows, pos] * cand_mask[..., None]
        label_mask = self.slate_observed[rows, pos] & cand_mask
        score = self.slate_score[rows, pos] * cand_mask[..., None]
        truth = None
        if self.req_truth is not None:
            truth = np.where(cand_mask, self.req_truth[idx[:, None], pos], 0).astype(np.float32)

        t_req = self.req_time[idx]
        user = self.req_user[idx]
        ie = self._sequence(
            "ie", self.req_ie_end[idx], self.ie_offsets[user], t_req, ie_len, self.schema.ie_actions
        )
        ipv = self._sequence(
            "ipv",
            self.req_ipv_end[idx],
            self.ipv_offsets[user],
            t_req,
            ipv_len,
            self.schema.ipv_actions,
        )
        return RerankBatch(
            request=idx,
            user=user,
            cand_item=cand_item.astype(np.int32),
            cand_feat=self.item_feat[cand_item],
            cand_score=score.astype(np.float32),
            cand_pos=np.where(cand_mask, pos, 0).astype(np.int32),
            cand_mask=cand_mask,
            label=label.astype(np.int8),
            label_mask=label_mask,
            ie_item=ie[0],
            ie_feat=self.item_feat[ie[0]],
            ie_act=ie[1],
            ie_len=ie[2],
            ipv_item=ipv[0],
            ipv_feat=self.item_feat[ipv[0]],
            ipv_act=ipv[1],
            ipv_len=ipv[2],
            truth=truth,
        )

    def _sequence(
        self,
        pre: str,
        end: np.ndarray,
        user_start: np.ndarray,
        t_req: np.ndarray,
        cap: int,
        actions: tuple,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Last ``cap`` events before ``end`` (global indices), oldest first.

        Returns item ids (B, cap), bucketized actions (B, cap, A + 1), lengths (B,).
        """
        start = np.maximum(user_start, end - cap)
        length = (end - start).astype(np.int32)
        jj = np.arange(cap)[None, :]
        mask = jj < length[:, None]  # (B, cap)
        ev = np.where(mask, start[:, None] + jj, 0)  # (B, cap) global event index
        if getattr(self, f"{pre}_item").size == 0:  # no events of this kind at all
            B = end.shape[0]
            zeros = np.zeros((B, cap, len(actions) + 1), np.int32)
            return np.zeros((B, cap), np.int32), zeros, length
        items = np.where(mask, getattr(self, f"{pre}_item")[ev], 0).astype(np.int32)
        raw = getattr(self, f"{pre}_act")[ev]  # (B, cap, A)
        cols = [a.bucketize(raw[..., i]) for i, a in enumerate(actions)]
        since = t_req[:, None] - getattr(self, f"{pre}_time")[ev]  # (B, cap) seconds
        cols.append(self.schema.decay_action.bucketize(since))
        act = np.stack(cols, axis=-1) * mask[..., None]
        return items, act.astype(np.int32), length


def _expect(cond: bool, log: RequestLog, what: str) -> None:
    if not cond:
        raise ValueError(f"dataset {log.name!r} is inconsistent: {what}")
