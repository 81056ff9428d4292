"""Additive sufficient statistics of the ranking metrics (:class:`MetricSums`).

:func:`ranking_sums` turns the labelled candidates of complete users into per-bucket sums;
sums of any parts finalize (:meth:`MetricSums.finalize`) to the metrics of the pooled data.
:func:`ranking_metrics` does both at once. Package overview: :mod:`shoal.metrics`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shoal.metrics.ranking import _auc, _ndcg, _rank

DEFAULT_KS: tuple[int, ...] = (5, 10)
BUCKET_NAMES: tuple[str, ...] = ("tail", "torso", "head")
LOGLOSS_EPS = 1e-7  # predicted probabilities are clipped to [eps, 1 - eps]


# --------------------------------------------------------------------------- sufficient stats
def _stat_names(ks: tuple[int, ...]) -> tuple[str, ...]:
    """Names of the additive statistics kept per bucket."""
    return (
        "impressions",  # labelled candidates
        "clicks",  # positive labels
        "logloss_sum",  # sum of binary cross-entropy
        "gauc_num",  # sum over two-class requests of impressions * AUC
        "gauc_den",  # sum over two-class requests of impressions
        "gauc_requests",  # number of two-class requests
        "uauc_sum",  # sum over two-class users of AUC
        "uauc_users",  # number of two-class users
        *(f"ndcg@{k}_sum" for k in ks),  # sum over requests with a positive of NDCG@k
        "ndcg_requests",  # number of requests with a positive
    )


def _check_layout(buckets: Any, ks: Any) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Validate bucket names and cut-offs; return them as tuples."""
    if isinstance(buckets, str):
        raise ValueError(f"buckets must be a sequence of names, not the string {buckets!r}")
    buckets, ks = tuple(buckets), tuple(ks)
    if not buckets:
        raise ValueError("buckets must name at least one bucket")
    for b in buckets:
        if not isinstance(b, str) or not b or "/" in b or b == "all":
            raise ValueError(
                f"bucket names must be non-empty strings without '/' and not 'all'; got {b!r}"
            )
    if len(set(buckets)) != len(buckets):
        raise ValueError(f"bucket names must be unique; got {buckets}")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"ks must be positive integers; got {k!r}")
    ks = tuple(int(k) for k in ks)
    if len(set(ks)) != len(ks):
        raise ValueError(f"ks must be unique; got {ks}")
    return buckets, ks


@dataclass(eq=False)
class MetricSums:
    """Additive sufficient statistics of the ranking metrics, per activity bucket.

    Sums of any number of parts, each holding complete users, finalize to exactly the metrics
    of the pooled data.

    Attributes
    ----------
    buckets : tuple[str, ...]
        User-activity bucket names, ``B`` of them.
    ks : tuple[int, ...]
        NDCG cut-offs.
    sums : dict[str, np.ndarray]
        Statistic name -> (B,) float64 sums, one entry per bucket.
    """

    buckets: tuple[str, ...]
    ks: tuple[int, ...]
    sums: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        self.buckets, self.ks = _check_layout(self.buckets, self.ks)
        names = _stat_names(self.ks)
        if not isinstance(self.sums, Mapping):
            raise ValueError(
                f"sums must be a mapping of statistic name -> array; got {type(self.sums).__name__}"
            )
        missing = sorted(set(names) - set(self.sums))
        extra = sorted(set(self.sums) - set(names))
        if missing or extra:
            raise ValueError(f"sums: missing statistics {missing}, unexpected statistics {extra}")
        sums = {}
        for name in names:
            v = np.array(self.sums[name], dtype=np.float64)  # copy: sums never alias inputs
            if v.shape != (len(self.buckets),):
                raise ValueError(
                    f"sums[{name!r}] must have shape ({len(self.buckets)},); got {v.shape}"
                )
            if not np.all(np.isfinite(v)):
                raise ValueError(f"sums[{name!r}] contains NaN or inf: {v.tolist()}")
            sums[name] = v
        self.sums = sums

    @classmethod
    def zeros(
        cls, buckets: Iterable[str] = BUCKET_NAMES, ks: Iterable[int] = DEFAULT_KS
    ) -> MetricSums:
        """All-zero statistics (the sums of no data)."""
        buckets, ks = _check_layout(buckets, ks)
        return cls(buckets, ks, {n: np.zeros(len(buckets)) for n in _stat_names(ks)})

    def __add__(self, other: MetricSums) -> MetricSums:
        if not isinstance(other, MetricSums):
            return NotImplemented
        if self.buckets != other.buckets or self.ks != other.ks:
            raise ValueError(
                "cannot add MetricSums with different layouts: "
                f"buckets {self.buckets} vs {other.buckets}, ks {self.ks} vs {other.ks}"
            )
        return MetricSums(
            self.buckets, self.ks, {n: v + other.sums[n] for n, v in self.sums.items()}
        )

    @staticmethod
    def total(parts: Iterable[MetricSums]) -> MetricSums:
        """Sum of one or more parts (ValueError when there are none)."""
        parts = list(parts)
        if not parts:
            raise ValueError("MetricSums.total needs at least one part; use MetricSums.zeros()")
        out = parts[0]
        for p in parts[1:]:
            out = out + p
        return MetricSums(out.buckets, out.ks, out.sums)  # a copy even for a single part

    def finalize(self) -> dict[str, dict[str, float]]:
        """Metrics overall and per bucket.

        Returns
        -------
        dict[str, dict[str, float]]
            Metric name -> ``{"all": v, <bucket>: v, ...}``. Names: ``gauc``, ``uauc``,
            ``ndcg@<k>`` per k, ``logloss``, ``impressions``, ``clicks``, ``ctr``,
            ``requests`` (requests counted in GAUC), ``users`` (users counted in UAUC).
            Ratios with a zero denominator are NaN; counts are floats.
        """
        cols = ("all", *self.buckets)
        s = {n: np.r_[v.sum(), v] for n, v in self.sums.items()}  # (1 + B,) each

        def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
            return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)

        metrics = {
            "gauc": ratio(s["gauc_num"], s["gauc_den"]),
            "uauc": ratio(s["uauc_sum"], s["uauc_users"]),
            **{f"ndcg@{k}": ratio(s[f"ndcg@{k}_sum"], s["ndcg_requests"]) for k in self.ks},
            "logloss": ratio(s["logloss_sum"], s["impressions"]),
            "impressions": s["impressions"],
            "clicks": s["clicks"],
            "ctr": ratio(s["clicks"], s["impressions"]),
            "requests": s["gauc_requests"],
            "users": s["uauc_users"],
        }
        return {m: dict(zip(cols, v.tolist(), strict=True)) for m, v in metrics.items()}

    # ------------------------------------------------------------ records (Flower messages)
    def to_record(self) -> dict[str, float]:
        """Flat ``{"<stat>/<bucket>": value}`` for a Flower ``MetricRecord``."""
        return {f"{n}/{b}": float(x) for n, v in self.sums.items() for b, x in zip(self.buckets, v)}

    @classmethod
    def from_record(
        cls,
        record: Mapping[str, float],
        buckets: Iterable[str] = BUCKET_NAMES,
        ks: Iterable[int] = DEFAULT_KS,
    ) -> MetricSums:
        """Inverse of :meth:`to_record`; the layout must be given and must match exactly.

        Raises
        ------
        ValueError
            If keys are missing or unexpected, or a value is not a finite number.
        """
        buckets, ks = _check_layout(buckets, ks)
        names = _stat_names(ks)
        want = [f"{n}/{b}" for n in names for b in buckets]
        missing = [key for key in want if key not in record]
        extra = sorted(set(record) - set(want))
        if missing or extra:
            raise ValueError(
                f"metric record does not match buckets {buckets}, ks {ks}: "
                f"missing keys {missing}, unexpected keys {extra}"
            )
        bad = []
        for key in want:
            try:
                ok = np.isfinite(float(record[key]))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                bad.append(f"{key}={record[key]!r}")
        if bad:
            raise ValueError(f"metric record has non-finite or non-numeric values: {bad}")
        return cls(
            buckets, ks, {n: np.array([float(record[f"{n}/{b}"]) for b in buckets]) for n in names}
        )

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Plain-Python snapshot (lists, JSON-serialisable)."""
        return {
            "buckets": list(self.buckets),
            "ks": list(self.ks),
            "sums": {n: v.tolist() for n, v in self.sums.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace layout and sums by those of ``state`` (validated as in the constructor)."""
        missing = sorted({"buckets", "ks", "sums"} - set(state))
        if missing:
            raise ValueError(f"MetricSums state is missing {missing}")
        new = MetricSums(tuple(state["buckets"]), tuple(state["ks"]), dict(state["sums"]))
        self.buckets, self.ks, self.sums = new.buckets, new.ks, new.sums


# --------------------------------------------------------------------------- entry points
def _int_array(x: Any, name: str, n: int) -> np.ndarray:
    a = np.asarray(x).ravel()
    if a.size == 0:
        return a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integers; got dtype {a.dtype}")
    if a.shape != (n,):
        raise ValueError(f"shapes differ: scores has {n} entries, {name} has {a.size}")
    return a


def ranking_sums(
    scores: np.ndarray,
    labels: np.ndarray,
    request: np.ndarray,
    user: np.ndarray,
    bucket: np.ndarray,
    probs: np.ndarray | None = None,
    buckets: Iterable[str] = BUCKET_NAMES,
    ks: Iterable[int] = DEFAULT_KS,
) -> MetricSums:
    """Additive statistics of the ranking metrics of some complete users.

    A request is the group of samples sharing ``(user, request)``, so request ids need only be
    unique within a user. Pass only labelled candidates (apply masks first), and pass all of a
    user's labelled candidates to the same call if the result is to be summed with others.

    Parameters
    ----------
    scores : np.ndarray
        (N,) finite ranking scores (higher ranks first).
    labels : np.ndarray
        (N,) binary labels in {0, 1} (bool, int or float).
    request : np.ndarray
        (N,) integer request ids.
    user : np.ndarray
        (N,) integer user ids.
    bucket : np.ndarray
        (N,) integer index into ``buckets`` of the sample's user; constant within a user.
    probs : np.ndarray, optional
        (N,) predicted click probabilities in [0, 1] for logloss; default ``sigmoid(scores)``.
        Clipped to ``[1e-7, 1 - 1e-7]``.
    buckets : Iterable[str]
        Activity bucket names.
    ks : Iterable[int]
        NDCG cut-offs.

    Returns
    -------
    MetricSums

    Raises
    ------
    ValueError
        On mismatched shapes, non-finite scores, labels outside {0, 1}, probabilities outside
        [0, 1], non-integer ids, a bucket index out of range, or a user in two buckets.

    Examples
    --------
    >>> s = ranking_sums([0.9, 0.1, 0.5, 0.2], [1, 0, 0, 1], [0, 0, 1, 1], [7, 7, 7, 7],
    ...                  [2, 2, 2, 2], ks=(1,))
    >>> m = s.finalize()
    >>> m["gauc"]["all"], m["gauc"]["head"], m["uauc"]["all"], m["ndcg@1"]["all"]
    (0.5, 0.5, 0.75, 0.5)
    >>> (s + s).finalize()["gauc"]["all"], (s + s).finalize()["requests"]["all"]
    (0.5, 4.0)
    """
    buckets, ks = _check_layout(buckets, ks)
    scores = np.asarray(scores, np.float64).ravel()
    n = scores.size
    labels = np.asarray(labels).ravel()
    if labels.shape != (n,):
        raise ValueError(f"shapes differ: scores has {n} entries, labels has {labels.size}")
    request = _int_array(request, "request", n)
    user = _int_array(user, "user", n)
    bucket = _int_array(bucket, "bucket", n)
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"scores contain NaN or inf ({int(np.sum(~np.isfinite(scores)))} entries)")
    y = labels.astype(np.float64)  # (N,)
    if not np.all((y == 0) | (y == 1)):
        bad = np.unique(labels[(y != 0) & (y != 1)])[:5]
        raise ValueError(f"labels must be 0 or 1; found {bad.tolist()}")
    if n and (bucket.min() < 0 or bucket.max() >= len(buckets)):
        raise ValueError(
            f"bucket index out of range [0, {len(buckets)}) for buckets {buckets}: "
            f"found {int(bucket.min())}..{int(bucket.max())}"
        )
    if probs is None:
        p = np.exp(-np.logaddexp(0.0, -scores))  # (N,) sigmoid without overflow
    else:
        p = np.asarray(probs, np.float64).ravel()
        if p.shape != (n,):
            raise ValueError(f"shapes differ: scores has {n} entries, probs has {p.size}")
        if not np.all((p >= 0) & (p <= 1)):  # also rejects NaN
            raise ValueError("probs must lie in [0, 1] (found values outside or NaN)")
    out = MetricSums.zeros(buckets, ks)
    if n == 0:
        return out
    nb = len(buckets)
    sums = out.sums

    # per-sample statistics
    p = np.clip(p, LOGLOSS_EPS, 1.0 - LOGLOSS_EPS)
    bce = -(y * np.log(p) + (1.0 - y) * np.log1p(-p))  # (N,)
    sums["impressions"] = np.bincount(bucket, minlength=nb).astype(np.float64)
    sums["clicks"] = np.bincount(bucket, weights=y, minlength=nb)
    sums["logloss_sum"] = np.bincount(bucket, weights=bce, minlength=nb)

    # users: bucket must be constant; AUC over all of a user's samples
    by_score = np.argsort(-scores, kind="stable")  # (N,) shared by both rankings
    ru = _rank((user,), scores, by_score)
    b_sorted = bucket[ru.order]  # (N,)
    user_bucket = b_sorted[ru.first]  # (U,)
    differs = b_sorted != user_bucket[ru.group]
    if differs.any():
        uid = user[ru.order][np.argmax(differs)]
        raise ValueError(f"bucket must be constant within a user; user {uid} has several")
    auc, ok = _auc(ru, y[ru.order])
    sums["uauc_sum"] = np.bincount(user_bucket[ok], weights=auc[ok], minlength=nb)
    sums["uauc_users"] = np.bincount(user_bucket[ok], minlength=nb).astype(np.float64)

    # requests: GAUC and NDCG@k
    rr = _rank((user, request), scores, by_score)
    y_sorted = y[rr.order]  # (N,)
    req_bucket = bucket[rr.order][rr.first]  # (R,)
    auc, ok = _auc(rr, y_sorted)
    sums["gauc_num"] = np.bincount(req_bucket[ok], weights=(rr.size * auc)[ok], minlength=nb)
    sums["gauc_den"] = np.bincount(req_bucket[ok], weights=rr.size[ok], minlength=nb)
    sums["gauc_requests"] = np.bincount(req_bucket[ok], minlength=nb).astype(np.float64)
    has_pos = np.bincount(rr.group, weights=y_sorted, minlength=rr.size.size) > 0  # (R,)
    sums["ndcg_requests"] = np.bincount(req_bucket[has_pos], minlength=nb).astype(np.float64)
    for k in ks:
        ndcg, ok = _ndcg(rr, y_sorted, k)  # ok == has_pos
        sums[f"ndcg@{k}_sum"] = np.bincount(req_bucket[ok], weights=ndcg[ok], minlength=nb)
    return out


def ranking_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    request: np.ndarray,
    user: np.ndarray,
    bucket: np.ndarray,
    probs: np.ndarray | None = None,
    buckets: Iterable[str] = BUCKET_NAMES,
    ks: Iterable[int] = DEFAULT_KS,
) -> dict[str, dict[str, float]]:
    """Ranking metrics of pooled data: ``ranking_sums(...).finalize()`` (same arguments)."""
    return ranking_sums(scores, labels, request, user, bucket, probs, buckets, ks).finalize()
