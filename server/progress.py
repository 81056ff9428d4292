"""Live progress of a federated run: round, sampled devices, loss and the latest GAUC."""

from __future__ import annotations

import math

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RoundProgress:
    """A rich progress bar over rounds (a no-op when ``enabled`` is False).

    Use as a context manager; pass :meth:`update` as the round loop's ``on_round``.
    """

    def __init__(self, strategy: str, rounds: int, first: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self.rounds = rounds
        self.gauc = math.nan
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("round {task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not enabled,
        )
        self._task = self._progress.add_task(strategy, total=rounds, completed=first - 1, info="")

    def __enter__(self) -> RoundProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def update(self, rnd: int, metrics: dict[str, float]) -> None:
        self.gauc = metrics.get("gauc/all", self.gauc)
        loss = metrics.get("train_loss", math.nan)
        info = (
            f"devices {int(metrics.get('replied', 0))}/{int(metrics.get('sampled', 0))}  "
            f"loss {loss:.4f}  GAUC {self.gauc:.4f}  failures {int(metrics.get('failures', 0))}"
        )
        if "epsilon" in metrics:
            info += f"  ε {metrics['epsilon']:.3g}"
        self._progress.update(self._task, completed=rnd, info=info)
