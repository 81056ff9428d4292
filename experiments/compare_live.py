"""Live display of ``shoal compare``: every strategy × seed, its state, round, latest GAUC, ETA.

On a terminal a rich table redraws twice a second; elsewhere (a log file, CI) one line is
printed when a run starts and when it ends. The ETA (:func:`eta_seconds`) uses the wall time
of finished runs, per strategy where one of the same strategy finished.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

FINISHED = ("done", "skipped")
STYLES = {
    "queued": "dim",
    "running": "bold cyan",
    "done": "green",
    "skipped": "green dim",
    "failed": "bold red",
    "interrupted": "yellow",
}


@dataclass
class JobState:
    """What the display knows of one strategy × seed."""

    strategy: str
    seed: int
    rounds: int
    status: str = "queued"
    round: int = 0
    gauc: float = math.nan
    seconds: float = 0.0
    """Wall time of finished work (previous sessions included)."""
    started: float | None = None
    """``time.monotonic()`` when the running process started."""

    def elapsed(self, now: float) -> float:
        return self.seconds + (now - self.started if self.started is not None else 0.0)


def eta_seconds(jobs: Sequence[JobState], now: float) -> float | None:
    """Seconds until every job has finished (None while there is nothing to go on).

    A queued job is expected to take the mean wall time of finished jobs of its strategy, or
    of all finished jobs; the running job that minus its elapsed time, or, before any job
    finished, its elapsed time extrapolated from its completed rounds.

    Examples
    --------
    >>> done = JobState("a", 0, 10, "done", seconds=30.0)
    >>> run = JobState("b", 0, 10, "running", round=5, started=0.0)
    >>> eta_seconds([done, run, JobState("a", 1, 10)], now=10.0)
    50.0
    """
    by_strategy: dict[str, list[float]] = {}
    for j in jobs:
        if j.status in FINISHED and j.seconds > 0:
            by_strategy.setdefault(j.strategy, []).append(j.seconds)
    every = [s for v in by_strategy.values() for s in v]

    def expected(j: JobState) -> float | None:
        own = by_strategy.get(j.strategy) or every
        return sum(own) / len(own) if own else None

    total = 0.0
    for j in jobs:
        if j.status in FINISHED or j.status == "failed":
            continue
        exp = expected(j)
        if j.status == "running":
            elapsed = j.elapsed(now)
            if exp is None:
                if j.round <= 0:
                    return None
                exp = elapsed * j.rounds / j.round
            total += max(exp - elapsed, 0.0)
        elif exp is None:
            return None
        else:
            total += exp
    return total


def _clock(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "—"
    s = round(s)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


class CompareDisplay:
    """Shows the jobs of a comparison; use as a context manager.

    Parameters
    ----------
    name : str
        The report name (table title).
    jobs : sequence of JobState
        Updated in place by the caller, who calls :meth:`event` at a start or an end.
    live : bool, optional
        Redraw a table (default: when the console is a terminal).
    """

    def __init__(self, name: str, jobs: Sequence[JobState], live: bool | None = None) -> None:
        self.name = name
        self.jobs = list(jobs)
        self.console = Console()
        self.live = self.console.is_terminal if live is None else live
        self.t0 = time.monotonic()
        self._live = Live(self, console=self.console, refresh_per_second=2) if self.live else None

    def __enter__(self) -> CompareDisplay:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.stop()

    def __rich__(self) -> Group:
        now = time.monotonic()
        table = Table(title=f"shoal compare {self.name}", title_justify="left")
        for col, just in (("strategy", "left"), ("seed", "right"), ("state", "left")):
            table.add_column(col, justify=just)
        for col in ("round", "GAUC", "time"):
            table.add_column(col, justify="right")
        for j in self.jobs:
            rnd = f"{j.round}/{j.rounds}" if j.status != "queued" else ""
            g = "" if math.isnan(j.gauc) else f"{j.gauc:.4f}"
            t = _clock(j.elapsed(now)) if j.status != "queued" else ""
            state = Text(j.status, style=STYLES.get(j.status, ""))
            table.add_row(j.strategy, str(j.seed), state, rnd, g, t)
        return Group(table, Text(self.footer(now)))

    def footer(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        done = sum(j.status in FINISHED for j in self.jobs)
        failed = sum(j.status == "failed" for j in self.jobs)
        tail = f", {failed} failed" if failed else ""
        return (
            f"{done}/{len(self.jobs)} runs finished{tail}  elapsed {_clock(now - self.t0)}  "
            f"ETA {_clock(eta_seconds(self.jobs, now))}"
        )

    def event(self, job: JobState, what: str) -> None:
        """A run started or ended: a line when not live (the live table redraws itself)."""
        if self.live:
            return
        g = "" if math.isnan(job.gauc) else f"  GAUC {job.gauc:.4f}"
        self.console.print(
            f"{job.strategy} seed {job.seed}: {what}  round {job.round}/{job.rounds}{g}  "
            f"[{self.footer()}]",
            highlight=False,
            soft_wrap=True,
        )
