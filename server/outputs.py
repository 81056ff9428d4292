"""What a federated run writes into its run directory, round by round.

* ``metrics.csv``: ``round, strategy, metric, bucket, value`` — evaluation metrics per
  activity bucket, training metrics, ``failures``, ``bytes_up``/``bytes_down`` (model bytes
  exchanged with devices that round), ``round_seconds`` (wall time) and ``train_seconds``
  (its training part).
* ``checkpoint.pt``: after every completed round, the global model, the strategy's state
  and the round number, written atomically; ``resume`` continues from it.
* at the end: ``model.pt`` (the final global reranker, ``shoal.client.checkpoint`` format),
  ``summary.json`` and PNG plots (:mod:`shoal.server.plots`).
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import torch
from flwr.app import ArrayRecord

FIELDS = ("round", "strategy", "metric", "bucket", "value")
BUCKETS = ("all", "tail", "torso", "head")
CKPT_FORMAT = "shoal-fed-checkpoint"


def metric_rows(rnd: int, strategy: str, metrics: dict[str, float]) -> list[dict]:
    """Rows of ``metrics.csv``: ``"gauc/head"`` → metric gauc, bucket head; else bucket all."""
    rows = []
    for key, value in metrics.items():
        metric, _, bucket = key.partition("/")
        if bucket and bucket not in BUCKETS:
            metric, bucket = key, ""
        rows.append(
            dict(
                round=rnd,
                strategy=strategy,
                metric=metric,
                bucket=bucket or "all",
                value=float(value),
            )
        )
    return rows


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Rows of a run's ``metrics.csv`` (round as int, value as float)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["round"], r["value"] = int(r["round"]), float(r["value"])
    return rows


class RunRecorder:
    """Appends a run's metrics and checkpoints it.

    Parameters
    ----------
    run_dir : Path
    strategy : str
        Strategy name written into every row.
    completed : int
        Last completed round (0 for a new run). Rows of later rounds, left by an interrupted
        run, are dropped so that a resumed run writes each round exactly once.
    """

    def __init__(self, run_dir: str | Path, strategy: str, completed: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.strategy = strategy
        self.path = self.run_dir / "metrics.csv"
        keep = [r for r in read_metrics(self.run_dir) if r["round"] <= completed]
        self._write(keep, "w")

    def _write(self, rows: list[dict], mode: str) -> None:
        new = mode == "w" or not self.path.exists()
        with self.path.open(mode, newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                w.writeheader()
            w.writerows(rows)

    def record(self, rnd: int, metrics: dict[str, float]) -> None:
        self._write(metric_rows(rnd, self.strategy, metrics), "a")

    def checkpoint(self, rnd: int, arrays: ArrayRecord, strategy_state: dict) -> None:
        """Write ``checkpoint.pt`` for round ``rnd`` atomically."""
        blob = {
            "format": CKPT_FORMAT,
            "round": rnd,
            "strategy": self.strategy,
            "arrays": dict(arrays.to_torch_state_dict()),
            "strategy_state": strategy_state,
        }
        fd, tmp = tempfile.mkstemp(dir=self.run_dir, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(blob, tmp)
            os.replace(tmp, self.run_dir / "checkpoint.pt")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def load_checkpoint(run_dir: str | Path, strategy: str) -> dict | None:
    """The run's last checkpoint (None if it has none).

    Raises
    ------
    ValueError
        An unreadable checkpoint, or one written by another strategy.
    """
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable checkpoint: {e}") from e
    if not isinstance(blob, dict) or blob.get("format") != CKPT_FORMAT:
        raise ValueError(f"{path} is not a Shoal federated checkpoint")
    if blob["strategy"] != strategy:
        raise ValueError(f"{path} was written by strategy {blob['strategy']!r}, not {strategy!r}")
    return blob
