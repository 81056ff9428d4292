"""``centralized``: the pooled-data upper bound.

The server trains on every user's cloud history and device-fresh data pooled, exactly as
``shoal train`` does (``shoal.server.training.fit``), and devices evaluate that model. It is
the accuracy a non-private system that uploads all behaviour would reach.
"""

from __future__ import annotations

from shoal.registry import STRATEGIES
from shoal.strategies.base import DeviceStrategy


@STRATEGIES.register("centralized")
class Centralized(DeviceStrategy):
    name = "centralized"
    train_task = None
    eval_task = "evaluate"
    init = "pooled"
