"""Which devices take part in a round: seeded sampling and the node ↔ device directory.

Sampling draws device ids (Flower partition ids) from a generator seeded by ``(seed, round,
purpose)`` alone, so every strategy run with the same seed trains on the same devices in the
same rounds, and a resumed run samples what the uninterrupted one would have. Flower's own
samplers use the global ``random`` module; these never do.

Flower addresses nodes by random node ids. In ``shoal simulate`` the simulation engine's node
registration is recorded into a :class:`DeviceDirectory` (node id → partition id). Without
one (e.g. under ``flwr run``) devices are numbered by sorted node id: still seeded and
deterministic for a given set of nodes, but not the same devices across runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import numpy as np

TRAIN, EVALUATE, POISSON = 1, 2, 3


def sample_devices(
    n_devices: int, fraction: float, seed: int, round: int, purpose: int = TRAIN
) -> np.ndarray:
    """Sorted ids of ``max(1, round(fraction * n_devices))`` devices drawn without replacement.

    Evaluation uses ``round=0`` so that the same devices are evaluated every time.
    """
    if n_devices <= 0:
        raise ValueError("no devices to sample from")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    k = min(n_devices, max(1, round_half_up(fraction * n_devices)))
    if k == n_devices:
        return np.arange(n_devices)
    rng = np.random.default_rng([seed, round, purpose])
    return np.sort(rng.choice(n_devices, size=k, replace=False))


def poisson_devices(n_devices: int, rate: float, seed: int, round: int) -> np.ndarray:
    """Sorted ids of the devices that each joined independently with probability ``rate``.

    Poisson sampling is what the subsampled-Gaussian privacy analysis assumes (DP runs use
    it); the number of devices varies from round to round around ``rate · n_devices``.
    """
    if n_devices <= 0:
        raise ValueError("no devices to sample from")
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    rng = np.random.default_rng([seed, round, POISSON])
    return np.flatnonzero(rng.random(n_devices) < rate)


def round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


class DeviceDirectory:
    """Node id ↔ device (partition) id of a simulation, filled once when nodes register."""

    knows_devices = True
    """Device ids equal the nodes' partition ids (messages may name the device)."""

    def __init__(self) -> None:
        self._device_of: dict[int, int] = {}
        self._node_of: dict[int, int] = {}
        self._ready = threading.Event()

    def set_mapping(self, node_to_device: dict[int, int]) -> None:
        """Record the engine's registration (called from the simulation thread)."""
        self._device_of = dict(node_to_device)
        self._node_of = {d: n for n, d in self._device_of.items()}
        if len(self._node_of) != len(self._device_of):
            raise ValueError("two nodes registered for the same device")
        self._ready.set()

    def wait(self, timeout: float) -> None:
        if not self._ready.wait(timeout):
            raise TimeoutError(f"simulation nodes did not register within {timeout} s")

    @property
    def n_devices(self) -> int:
        return len(self._node_of)

    def nodes(self, devices: Iterable[int]) -> list[int]:
        return [self._node_of[int(d)] for d in devices]

    def device(self, node: int) -> int:
        return self._device_of[node]


class SortedNodes:
    """Fallback directory: device ``i`` is the ``i``-th node id in sorted order."""

    knows_devices = False

    def __init__(self, node_ids: Iterable[int]) -> None:
        self._nodes = sorted(int(n) for n in node_ids)
        self._index = {n: i for i, n in enumerate(self._nodes)}

    @property
    def n_devices(self) -> int:
        return len(self._nodes)

    def nodes(self, devices: Iterable[int]) -> list[int]:
        return [self._nodes[int(d)] for d in devices]

    def device(self, node: int) -> int:
        return self._index[node]
