"""Reply checks and aggregation: plain functions the strategies orchestrate.

A reply is excluded (and counted as a failure, with its reason) when it is a Flower error
(the device raised or its app failed), lacks its records, or carries arrays with missing,
extra or mis-shaped entries, non-finite values, or a non-finite or negative ``num-examples``.
Aggregation runs over the valid replies sorted by device, in float64, so the result does not
depend on the order replies arrive in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from shoal.metrics import MetricSums

NUM_EXAMPLES = "num-examples"
Layout = dict[str, tuple[tuple[int, ...], str]]


def layout(arrays: ArrayRecord) -> Layout:
    """Name → (shape, dtype) of every array."""
    return {k: (tuple(a.shape), str(a.dtype)) for k, a in arrays.items()}


def reply_problem(msg: Message, expect_arrays: Layout | None, metric_keys: set[str] | None):
    """Why ``msg`` cannot be aggregated, or None if it can.

    Parameters
    ----------
    msg : Message
        A reply.
    expect_arrays : dict, optional
        Layout the reply's ``arrays`` must have exactly (None: the reply carries no arrays).
    metric_keys : set of str, optional
        Keys the ``metrics`` record must contain besides ``num-examples``.
    """
    if msg.has_error():
        return f"device error: {msg.error.reason}"
    content = msg.content
    metrics = content.metric_records.get("metrics")
    if metrics is None:
        return "reply has no 'metrics' record"
    n = metrics.get(NUM_EXAMPLES)
    if not isinstance(n, (int, float)) or not math.isfinite(n) or n < 0:
        return f"bad {NUM_EXAMPLES}: {n!r}"
    if metric_keys is not None:
        missing = metric_keys - set(metrics)
        if missing:
            return f"metrics lack {sorted(missing)[:3]}"
        for k in metric_keys:
            v = metrics[k]
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                return f"metric {k} is {v!r}"
    if expect_arrays is None:
        return None
    arrays = content.array_records.get("arrays")
    if arrays is None:
        return "reply has no 'arrays' record"
    got = layout(arrays)
    if got.keys() != expect_arrays.keys():
        extra, missing = got.keys() - expect_arrays.keys(), expect_arrays.keys() - got.keys()
        return f"array keys differ: missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}"
    for k, (shape, dtype) in expect_arrays.items():
        if got[k] != (shape, dtype):
            return f"array {k} is {got[k]}, expected {(shape, dtype)}"
    for k, a in arrays.items():
        if not np.isfinite(a.numpy()).all():
            return f"array {k} has non-finite values"
    return None


def weighted_average(records: Sequence[ArrayRecord], weights: Sequence[float]) -> ArrayRecord:
    """Σ w_i x_i / Σ w_i of each array, accumulated in float64 (weights must sum > 0)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.sum() <= 0:
        raise ValueError("weighted_average needs a positive total weight")
    w = w / w.sum()
    out = {}
    for k, first in records[0].items():
        acc = np.zeros(first.shape, dtype=np.float64)
        for wi, rec in zip(w, records):
            acc += wi * rec[k].numpy()
        dtype = np.dtype(first.dtype)
        out[k] = Array((np.rint(acc) if dtype.kind in "iub" else acc).astype(dtype))
    return ArrayRecord(out)


def sum_metric_sums(records: Sequence[Mapping[str, float]], buckets, ks) -> MetricSums:
    """Exact total of per-device metric sums (``MetricSums.to_record`` layout)."""
    parts = [
        MetricSums.from_record({k: v for k, v in r.items() if "/" in k}, buckets, ks)
        for r in records
    ]
    return MetricSums.total(parts) if parts else MetricSums.zeros(buckets, ks)


def flatten_metrics(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{"gauc": {"all": v, ...}}`` → ``{"gauc/all": v, ...}``."""
    return {f"{m}/{b}": float(v) for m, per in metrics.items() for b, v in per.items()}
