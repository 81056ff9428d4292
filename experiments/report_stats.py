"""Statistics of a comparison: mean ± Student-t confidence interval over seeds, and which
strategy (if any) wins a column.

A strategy *wins* a column only when its interval lies entirely on the better side of every
other strategy's interval; a top mean whose interval overlaps another's is a tie, not a win.
With one seed the interval is undefined (NaN) and nothing wins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LOWER_IS_BETTER = frozenset({"logloss", "bytes_up", "bytes_down", "bytes_total", "epsilon"})
"""Metrics where a smaller value is better (everything else: larger is better)."""


@dataclass(frozen=True)
class Interval:
    """Mean and half-width of a confidence interval over ``n`` values."""

    mean: float
    half: float
    """Half-width: the interval is ``mean ± half`` (NaN when ``n < 2``)."""
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean ± Student-t interval: ``t_{(1+c)/2, n-1} · s / √n`` with the sample std ``s``.

    Parameters
    ----------
    values : sequence of float
        One value per seed.
    confidence : float
        Two-sided confidence level.

    Examples
    --------
    >>> iv = mean_ci([1.0, 2.0, 3.0])
    >>> round(iv.mean, 6), round(iv.half, 4), iv.n
    (2.0, 2.4841, 3)
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if v.size == 1:
        return Interval(float(v[0]), math.nan, 1)
    s = float(np.std(v, ddof=1))
    t = float(stats.t.ppf((1.0 + confidence) / 2.0, v.size - 1))
    return Interval(float(v.mean()), t * s / math.sqrt(v.size), int(v.size))


def higher_is_better(metric: str) -> bool:
    """Direction of a metric: False for losses, communication bytes and ε."""
    return metric not in LOWER_IS_BETTER


@dataclass(frozen=True)
class Verdict:
    """Who leads a column and whether that is a win."""

    leader: str | None
    """The strategy with the best mean (None for an empty column)."""
    win: bool
    """True when the leader's interval does not overlap any other strategy's."""
    overlaps: tuple[str, ...]
    """Strategies whose interval overlaps the leader's (empty when it wins)."""


def judge(column: Mapping[str, Interval], higher: bool = True) -> Verdict:
    """The leader of a column and whether it wins (no interval overlaps the leader's).

    Parameters
    ----------
    column : mapping of strategy -> Interval
    higher : bool
        True when larger values are better.

    Examples
    --------
    >>> a, b = Interval(0.60, 0.01, 3), Interval(0.55, 0.02, 3)
    >>> judge({"a": a, "b": b})
    Verdict(leader='a', win=True, overlaps=())
    >>> judge({"a": a, "b": Interval(0.58, 0.02, 3)}).win
    False
    """
    items = [(k, iv) for k, iv in column.items() if not math.isnan(iv.mean)]
    if not items:
        return Verdict(None, False, ())
    sign = 1.0 if higher else -1.0
    leader, best = max(items, key=lambda kv: sign * kv[1].mean)
    others = [(k, iv) for k, iv in items if k != leader]
    if not others:  # nothing to beat
        return Verdict(leader, False, ())
    if math.isnan(best.half) or any(math.isnan(iv.half) for _, iv in others):
        return Verdict(leader, False, tuple(k for k, _ in others))
    if higher:
        overlaps = tuple(k for k, iv in others if iv.high >= best.low)
    else:
        overlaps = tuple(k for k, iv in others if iv.low <= best.high)
    return Verdict(leader, not overlaps, overlaps)


def fmt(iv: Interval, digits: int = 4) -> str:
    """``mean ± half`` (just the mean when the interval is undefined)."""
    if math.isnan(iv.half):
        return f"{iv.mean:.{digits}f}"
    return f"{iv.mean:.{digits}f} ± {iv.half:.{digits}f}"
