"""Feature schema of a request log: item fields, cloud scores, behaviour actions, labels.

A dataset (simulator or real log) declares its features with a :class:`Schema`. Every
categorical id in Shoal reserves ``0`` for padding / unknown, so each field's vocabulary size
counts that slot. Behaviour actions are stored raw (floats) and bucketized when a batch is
gathered (:meth:`ActionSpec.bucketize`), so the bucket boundaries are part of the schema and
travel with the data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

ACTION_KINDS = ("bucket", "binary", "category")

# Time-since buckets (seconds) for the decay features e7 / d12: 1 min ... 30 days.
DEFAULT_DECAY_BOUNDARIES: tuple[float, ...] = (
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    3 * 3600.0,
    12 * 3600.0,
    86400.0,
    3 * 86400.0,
    7 * 86400.0,
    30 * 86400.0,
)


@dataclass(frozen=True)
class ActionSpec:
    """One behaviour action feature.

    Parameters
    ----------
    name : str
        Feature name, e.g. ``"exposure_duration"``.
    kind : {"bucket", "binary", "category"}
        ``bucket``: raw value mapped to ``1 + searchsorted(boundaries, v, side="right")``;
        ``binary``: 0/1 mapped to 1/2; ``category``: integer code ``c`` in
        ``[0, n_values)`` mapped to ``1 + c``. Id 0 is padding in all kinds.
    boundaries : tuple of float
        Increasing bucket edges (``bucket`` only).
    n_values : int
        Number of codes (``category`` only; 2 for ``binary``).
    description : str
        What the feature measures, with its unit.
    """

    name: str
    kind: str
    boundaries: tuple[float, ...] = ()
    n_values: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ACTION_KINDS:
            raise ValueError(f"action {self.name!r}: kind must be one of {ACTION_KINDS}")
        if self.kind == "bucket":
            b = np.asarray(self.boundaries, dtype=np.float64)
            if b.size == 0 or np.any(np.diff(b) <= 0):
                raise ValueError(f"action {self.name!r}: boundaries must be non-empty, increasing")
        if self.kind == "category" and self.n_values < 1:
            raise ValueError(f"action {self.name!r}: category needs n_values >= 1")

    @property
    def vocab(self) -> int:
        """Number of ids including the padding id 0."""
        if self.kind == "bucket":
            return len(self.boundaries) + 2
        if self.kind == "binary":
            return 3
        return self.n_values + 1

    def bucketize(self, values: np.ndarray) -> np.ndarray:
        """Map raw values to ids in ``[1, vocab)``.

        Parameters
        ----------
        values : np.ndarray
            Raw values of any shape.

        Returns
        -------
        np.ndarray
            int32 ids of the same shape (never 0; callers zero the padded positions).
        """
        v = np.asarray(values)
        if self.kind == "bucket":
            ids = np.searchsorted(np.asarray(self.boundaries), v, side="right") + 1
        elif self.kind == "binary":
            ids = (v > 0).astype(np.int64) + 1
        else:
            ids = np.clip(v.astype(np.int64), 0, self.n_values - 1) + 1
        return ids.astype(np.int32)


@dataclass(frozen=True)
class Schema:
    """Features of one dataset.

    Parameters
    ----------
    item_fields : tuple of str
        Categorical item features (p1-p6 in EdgeRec), columns of the catalog.
    item_vocab : tuple of int
        Vocabulary size of each item field, padding id 0 included.
    score_names : tuple of str
        Float features the cloud ships with each candidate (p7: cloud scores).
    ie_actions, ipv_actions : tuple of ActionSpec
        Stored action features of item-exposure (e1-e6) and item-page-view (d1-d11) events.
        The time-since-event feature (e7 / d12) is derived per request and appended last.
    label_names : tuple of str
        Candidate labels; the first is always ``"click"``.
    decay_boundaries : tuple of float
        Bucket edges (seconds) of the derived time-since features.
    """

    item_fields: tuple[str, ...]
    item_vocab: tuple[int, ...]
    score_names: tuple[str, ...]
    ie_actions: tuple[ActionSpec, ...]
    ipv_actions: tuple[ActionSpec, ...]
    label_names: tuple[str, ...] = ("click",)
    decay_boundaries: tuple[float, ...] = DEFAULT_DECAY_BOUNDARIES
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.item_fields) != len(self.item_vocab):
            raise ValueError("item_fields and item_vocab must have the same length")
        if not self.label_names or self.label_names[0] != "click":
            raise ValueError(f"label_names must start with 'click', got {self.label_names}")

    @property
    def decay_action(self) -> ActionSpec:
        """The derived time-since action appended to both sequences."""
        return ActionSpec("time_since", "bucket", self.decay_boundaries, 0, "seconds since event")

    @property
    def ie_action_vocab(self) -> tuple[int, ...]:
        """Vocab sizes of the gathered IE action columns (stored actions + time-since)."""
        return tuple(a.vocab for a in self.ie_actions) + (self.decay_action.vocab,)

    @property
    def ipv_action_vocab(self) -> tuple[int, ...]:
        """Vocab sizes of the gathered IPV action columns (stored actions + time-since)."""
        return tuple(a.vocab for a in self.ipv_actions) + (self.decay_action.vocab,)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (inverse of :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schema:
        """Rebuild a schema saved by :meth:`to_dict`."""
        try:
            return cls(
                item_fields=tuple(d["item_fields"]),
                item_vocab=tuple(int(v) for v in d["item_vocab"]),
                score_names=tuple(d["score_names"]),
                ie_actions=tuple(_action(a) for a in d["ie_actions"]),
                ipv_actions=tuple(_action(a) for a in d["ipv_actions"]),
                label_names=tuple(d["label_names"]),
                decay_boundaries=tuple(float(b) for b in d["decay_boundaries"]),
                extra=dict(d.get("extra", {})),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"schema is missing or has a malformed entry: {e}") from e


def _action(d: dict[str, Any]) -> ActionSpec:
    return ActionSpec(
        name=d["name"],
        kind=d["kind"],
        boundaries=tuple(float(b) for b in d.get("boundaries", ())),
        n_values=int(d.get("n_values", 0)),
        description=d.get("description", ""),
    )
