"""``fedavg-finetune``: FedAvg, then a few local steps on each device before it evaluates.

The simplest personalization baseline: training is exactly ``fedavg``; at evaluation a device
fine-tunes the global model for ``fed.finetune_epochs`` on its device-fresh data and
evaluates that copy, which it then discards.
"""

from __future__ import annotations

from shoal.registry import STRATEGIES
from shoal.strategies.fedavg import FedAvg


@STRATEGIES.register("fedavg-finetune")
class FedAvgFinetune(FedAvg):
    name = "fedavg-finetune"
    eval_task = "evaluate-finetune"
