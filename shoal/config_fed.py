"""The ``fed:`` section of :class:`shoal.config.ShoalConfig`: federated runs."""

from __future__ import annotations

from dataclasses import dataclass

from shoal.errors import check

OPTIMIZERS = ("sgd", "adam")
INITS = ("cloud", "random")
STORES = ("disk", "memory")
WEIGHTINGS = ("auto", "examples", "equal")


@dataclass
class FedConfig:
    """A federated run (``shoal simulate``): strategy, sampling, local training, evaluation.

    Local training has its own settings (``local_*``); the listwise loss weight and gradient
    clipping come from ``train:``, which also trains the cloud model.
    """

    strategy: str = "fedavg"
    """Registered strategy name (``shoal simulate --list`` shows them)."""
    devices: int = 0
    """Number of devices (0 = one per user with data). On ``sim`` a positive value also sets
    the number of simulated users; on real data it keeps the first ``devices`` users."""
    rounds: int = 20
    fraction: float = 0.1
    """Share of devices sampled for training each round (seeded; identical across strategies
    with the same seed)."""
    min_devices: int = 2
    """A training round aggregates only if at least this many devices replied validly;
    otherwise the global model is kept and the round is counted as failed."""
    eval_every: int = 5
    """Federated evaluation every k rounds, and always after the last round."""
    eval_fraction: float = 1.0
    """Share of devices evaluated (seeded, the same devices at every evaluation)."""
    weighting: str = "auto"
    """Aggregation weights: ``examples`` (each device's number of requests, FedAvg's),
    ``equal``, or ``auto`` (examples; equal for DP strategies, which refuse ``examples``)."""
    local_epochs: int = 1
    local_lr: float = 0.05
    local_batch: int = 16
    """Requests per local mini-batch."""
    local_optimizer: str = "sgd"
    """``sgd`` (stateless between rounds, the FedAvg default) or ``adam`` (fresh each round)."""
    local_per_page: int = 0
    """Requests drawn per page for each local epoch (0 = all: devices hold few pages)."""
    finetune_epochs: int = 1
    """``fedavg-finetune``: local epochs on device-fresh data before evaluation."""
    init: str = "cloud"
    """Start from the ``cloud`` model (trained on cloud history with ``train:``) or ``random``."""
    timeout: float = 600.0
    """Seconds to wait for the replies of one round; late devices count as failures."""
    actors: int = 0
    """ClientApp actors (one CPU each; 0 = one per core)."""
    store: str = "disk"
    """Device store for per-device state: ``disk`` (one file per device under the run
    directory; survives resume) or ``memory`` (Flower's ``context.state``; small state only)."""
    resume: str | None = None
    """Run directory of an interrupted run to continue from its last completed round."""

    def __post_init__(self) -> None:
        for k in ("rounds", "eval_every", "local_epochs", "local_batch"):
            check(getattr(self, k) >= 1, f"fed.{k}", f"must be >= 1, got {getattr(self, k)}")
        for k in ("devices", "min_devices", "actors", "local_per_page", "finetune_epochs"):
            check(getattr(self, k) >= 0, f"fed.{k}", f"must be >= 0, got {getattr(self, k)}")
        check(0.0 < self.fraction <= 1.0, "fed.fraction", f"must be in (0, 1], got {self.fraction}")
        check(0.0 < self.eval_fraction <= 1.0, "fed.eval_fraction", "must be in (0, 1]")
        check(self.local_lr > 0, "fed.local_lr", f"must be > 0, got {self.local_lr}")
        check(self.timeout > 0, "fed.timeout", f"must be > 0, got {self.timeout}")
        for k, allowed in (
            ("local_optimizer", OPTIMIZERS),
            ("init", INITS),
            ("store", STORES),
            ("weighting", WEIGHTINGS),
        ):
            v = getattr(self, k)
            check(v in allowed, f"fed.{k}", f"must be one of {allowed}, got {v!r}")
