"""Federated strategies, one per file, registered in ``shoal.registry.STRATEGIES``.

Importing this package registers every built-in strategy.
"""

from shoal.strategies import (
    centralized,
    cloud_only,
    fedavg,
    fedavg_dp,
    fedavg_finetune,
    local_only,
)

__all__ = ["centralized", "cloud_only", "fedavg", "fedavg_dp", "fedavg_finetune", "local_only"]
