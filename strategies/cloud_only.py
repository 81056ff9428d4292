"""``cloud-only``: the cloud model, trained on cloud history only; devices just evaluate it.

What today's paging systems do: the reranker knows what the cloud logged, nothing of the
device's fresh behaviour. No device trains; rounds only schedule evaluations.
"""

from __future__ import annotations

from shoal.registry import STRATEGIES
from shoal.strategies.base import DeviceStrategy


@STRATEGIES.register("cloud-only")
class CloudOnly(DeviceStrategy):
    name = "cloud-only"
    train_task = None
    eval_task = "evaluate"
    init = "cloud"
