"""``fedavg``: one global reranker averaged from device updates (McMahan et al., 2017).

Each round a seeded share of devices trains the global model for ``fed.local_epochs`` on its
device-fresh data; the server averages the returned weights, weighted by each device's
number of requests. A device without device-fresh data replies with weight 0.
"""

from __future__ import annotations

from shoal.registry import STRATEGIES
from shoal.strategies.base import DeviceStrategy


@STRATEGIES.register("fedavg")
class FedAvg(DeviceStrategy):
    name = "fedavg"
    train_task = "fit"
    eval_task = "evaluate"
