"""``local-only``: every device trains its own copy of the cloud model, alone.

A sampled device continues from its personal model (the cloud model the first time), trains
``fed.local_epochs`` on its device-fresh data and keeps the result in the device store; it
replies with metrics only, so the server's model never changes. A device evaluates its
personal model, or the cloud model if it was never sampled.
"""

from __future__ import annotations

from shoal.registry import STRATEGIES
from shoal.strategies.base import DeviceStrategy


@STRATEGIES.register("local-only")
class LocalOnly(DeviceStrategy):
    name = "local-only"
    train_task = "fit-personal"
    eval_task = "evaluate-personal"
    returns_arrays = False
