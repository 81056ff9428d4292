"""The round loop of a federated run.

Flower's ``Strategy.start`` runs rounds 1..N in one go. Shoal needs more from the loop than
logging: continuing from a checkpointed round (resume), evaluating every k rounds, a
checkpoint and the run's metrics after every round, communication and wall-time accounting,
and stopping early when a strategy says so (a privacy budget about to be exceeded). This loop
calls exactly the same four ``Strategy`` hooks, so any Flower strategy or wrapper around a
Shoal strategy (e.g. Flower's DP wrappers) runs in it unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from shoal.config import FedConfig
from shoal.server.outputs import RunRecorder
from shoal.strategies.aggregate import payload_bytes


def model_bytes(messages: list[Message]) -> int:
    """Serialized bytes of the ``arrays`` records the messages carry (each message counted)."""
    total = 0
    for m in messages:
        if m.has_error():
            continue
        arr = m.content.array_records.get("arrays")
        if arr is not None:
            total += payload_bytes(arr)
    return total


@dataclass
class LoopResult:
    arrays: ArrayRecord
    last_round: int
    stopped_early: bool


def run_rounds(
    strategy: Strategy,
    grid: Grid,
    arrays: ArrayRecord,
    fed: FedConfig,
    recorder: RunRecorder,
    first_round: int = 1,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
    should_stop: Callable[[int], bool] | None = None,
) -> LoopResult:
    """Rounds ``first_round..fed.rounds``; checkpoint and metrics after each.

    Parameters
    ----------
    strategy : Strategy
        Any Flower strategy; its ``state_dict()`` is checkpointed when it has one.
    grid : Grid
    arrays : ArrayRecord
        Global model at the start of ``first_round``.
    fed : FedConfig
        ``rounds``, ``eval_every``, ``timeout``.
    recorder : RunRecorder
    on_round : callable, optional
        Called with (round, that round's metrics) for progress display.
    should_stop : callable, optional
        Called with the round about to start; True ends the run before it.
    """
    last = first_round - 1
    for rnd in range(first_round, fed.rounds + 1):
        if should_stop is not None and should_stop(rnd):
            return LoopResult(arrays, last, True)
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        sent = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
        replies = list(grid.send_and_receive(sent, timeout=fed.timeout)) if sent else []
        new, train_metrics = strategy.aggregate_train(rnd, replies)
        if new is not None:
            arrays = new
        if train_metrics is not None:
            metrics.update(train_metrics)
        metrics["train_seconds"] = time.perf_counter() - t0
        metrics["bytes_down"] = float(model_bytes(sent))
        metrics["bytes_up"] = float(model_bytes(replies))
        if rnd % fed.eval_every == 0 or rnd == fed.rounds:
            sent = list(strategy.configure_evaluate(rnd, arrays, ConfigRecord(), grid))
            replies = list(grid.send_and_receive(sent, timeout=fed.timeout)) if sent else []
            metrics["bytes_down"] += model_bytes(sent)
            ev = strategy.aggregate_evaluate(rnd, replies)
            if ev is not None:
                metrics.update(ev)
        metrics["round_seconds"] = time.perf_counter() - t0
        recorder.record(rnd, metrics)
        state = strategy.state_dict() if hasattr(strategy, "state_dict") else {}
        recorder.checkpoint(rnd, arrays, state)
        last = rnd
        if on_round is not None:
            on_round(rnd, metrics)
    return LoopResult(arrays, last, False)
