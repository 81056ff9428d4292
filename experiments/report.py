"""The data of a comparison report: final results per run, ``results.csv``, the summary table.

A finished run (strategy × seed) contributes its final-round values: the evaluation metrics
of ``summary.json`` (``final``: metric → bucket → value), its communication and time totals
(``totals``; ``bytes_total`` = up + down) and, for private runs, the last ``epsilon`` of its
``metrics.csv``. The summary table gives mean ± Student-t interval over seeds for each
strategy and column and marks a column's winner (:mod:`shoal.experiments.report_stats`).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shoal.experiments.report_stats import Interval, Verdict, higher_is_better, judge, mean_ci
from shoal.server.outputs import read_metrics

FIELDS = ("strategy", "seed", "metric", "bucket", "value")
TOTALS = ("bytes_up", "bytes_down", "round_seconds", "failures")


@dataclass
class RunResult:
    """One finished run of a comparison."""

    strategy: str
    seed: int
    run_dir: Path
    summary: dict
    metrics: list[dict]
    """Rows of the run's ``metrics.csv`` (:func:`shoal.server.outputs.read_metrics`)."""

    def series(self, metric: str, bucket: str = "all") -> dict[int, float]:
        """``round -> value`` of one metric of ``metrics.csv``."""
        return {
            r["round"]: r["value"]
            for r in self.metrics
            if r["metric"] == metric and r["bucket"] == bucket
        }


def load_run(strategy: str, seed: int, run_dir: str | Path) -> RunResult:
    """A finished run from its directory.

    Raises
    ------
    ValueError
        The directory has no ``summary.json`` (the run did not finish).
    """
    run_dir = Path(run_dir)
    path = run_dir / "summary.json"
    if not path.is_file():
        raise ValueError(f"{run_dir} has no summary.json: the run did not finish")
    return RunResult(strategy, seed, run_dir, json.loads(path.read_text()), read_metrics(run_dir))


def final_values(run: RunResult) -> list[dict]:
    """Rows ``strategy, seed, metric, bucket, value`` of one run's final-round values."""
    out = []

    def add(metric: str, bucket: str, value: float) -> None:
        out.append(
            dict(strategy=run.strategy, seed=run.seed, metric=metric, bucket=bucket, value=value)
        )

    for metric, by_bucket in run.summary.get("final", {}).items():
        for bucket, value in by_bucket.items():
            add(metric, bucket, float(value))
    totals = run.summary.get("totals", {})
    for k in TOTALS:
        if k in totals:
            add(k, "all", float(totals[k]))
    if "bytes_up" in totals and "bytes_down" in totals:
        add("bytes_total", "all", float(totals["bytes_up"]) + float(totals["bytes_down"]))
    eps = run.series("epsilon")
    if eps and "epsilon" not in run.summary.get("final", {}):
        add("epsilon", "all", eps[max(eps)])
    return out


def result_rows(runs: Iterable[RunResult]) -> list[dict]:
    """Final-round rows of every run (``results.csv``)."""
    return [row for run in runs for row in final_values(run)]


def write_results_csv(path: str | Path, rows: Sequence[dict]) -> Path:
    """Write ``results.csv`` (columns :data:`FIELDS`)."""
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in FIELDS})
    return path


def read_results_csv(path: str | Path) -> list[dict]:
    """Rows of a ``results.csv`` (seed as int, value as float)."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["seed"], r["value"] = int(r["seed"]), float(r["value"])
    return rows


@dataclass(frozen=True)
class Column:
    """A column of the summary table: one metric and bucket, shown scaled."""

    metric: str
    bucket: str
    label: str
    scale: float = 1.0
    """Values are divided by this before display (bytes → MB)."""
    digits: int = 4


COLUMNS = (
    Column("gauc", "all", "GAUC"),
    Column("gauc", "tail", "GAUC tail"),
    Column("gauc", "torso", "GAUC torso"),
    Column("gauc", "head", "GAUC head"),
    Column("uauc", "all", "user AUC"),
    Column("ndcg@10", "all", "NDCG@10"),
    Column("logloss", "all", "logloss"),
    Column("bytes_total", "all", "MB exchanged", scale=1e6, digits=2),
    Column("epsilon", "all", "ε", digits=2),
)
"""Columns of the summary table, in order; a column without values is left out."""


@dataclass
class SummaryTable:
    """Mean ± interval per strategy and column, and each column's verdict."""

    strategies: list[str]
    columns: list[Column]
    cells: dict[tuple[str, Column], Interval] = field(default_factory=dict)
    verdicts: dict[Column, Verdict] = field(default_factory=dict)
    confidence: float = 0.95

    def seeds(self, strategy: str) -> int:
        """Number of seeds behind a strategy's cells (0 when it has none)."""
        return max((iv.n for (s, _), iv in self.cells.items() if s == strategy), default=0)


def summary_table(
    rows: Sequence[dict],
    strategies: Sequence[str],
    confidence: float = 0.95,
    columns: Sequence[Column] = COLUMNS,
) -> SummaryTable:
    """Summarize final-round rows into a :class:`SummaryTable`.

    Parameters
    ----------
    rows : sequence of dict
        ``results.csv`` rows (:func:`result_rows`).
    strategies : sequence of str
        Table rows, in order (strategies without results get empty cells).
    confidence : float
        Level of the Student-t intervals.
    """
    table = SummaryTable(list(strategies), [], confidence=confidence)
    for col in columns:
        column: dict[str, Interval] = {}
        for s in strategies:
            v = [
                r["value"] / col.scale
                for r in rows
                if r["strategy"] == s and r["metric"] == col.metric and r["bucket"] == col.bucket
            ]
            v = [x for x in v if math.isfinite(x)]
            if v:
                column[s] = mean_ci(v, confidence)
        if not column:
            continue
        table.columns.append(col)
        for s, iv in column.items():
            table.cells[(s, col)] = iv
        table.verdicts[col] = judge(column, higher_is_better(col.metric))
    return table


PAIRED = COLUMNS[:6]
"""Columns of the paired-difference table (the utility metrics)."""


def choose_baseline(strategies: Sequence[str], wanted: str = "") -> str:
    """The reference of paired differences: ``wanted``, else ``cloud-only``, else the first.

    Raises
    ------
    ValueError
        ``wanted`` is not one of the compared strategies.
    """
    if wanted:
        if wanted not in strategies:
            raise ValueError(f"baseline {wanted!r} is not compared; compared: {list(strategies)}")
        return wanted
    return "cloud-only" if "cloud-only" in strategies else strategies[0]


def paired_differences(
    rows: Sequence[dict],
    strategies: Sequence[str],
    baseline: str,
    confidence: float = 0.95,
    columns: Sequence[Column] = PAIRED,
) -> dict[tuple[str, Column], Interval]:
    """Mean ± interval of (strategy − baseline) over the seeds both have, per column.

    Runs of one seed share the data, the model initialisation and the device schedule, so
    the difference seed by seed cancels what they share: a strategy is better than the
    baseline at the given confidence when the interval of the differences excludes 0.
    """
    value = {(r["strategy"], r["seed"], r["metric"], r["bucket"]): r["value"] for r in rows}
    out: dict[tuple[str, Column], Interval] = {}
    for s in strategies:
        if s == baseline:
            continue
        for col in columns:
            d = [
                (v - value[(baseline, seed, m, b)]) / col.scale
                for (st, seed, m, b), v in value.items()
                if st == s
                and m == col.metric
                and b == col.bucket
                and (baseline, seed, m, b) in value
            ]
            if d:
                out[(s, col)] = mean_ci(d, confidence)
    return out
