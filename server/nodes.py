"""Record which simulated node is which device (for seeded, identical device sampling).

Flower's simulation engine registers one node per partition with random node ids
(``vce_api._register_nodes``, flwr 1.41). :func:`recording_nodes` wraps that function for
the duration of a simulation so the node id → partition id mapping it returns lands in a
:class:`~shoal.strategies.sampling.DeviceDirectory` the strategy reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flwr.server.superlink.fleet.vce import vce_api

from shoal.strategies.sampling import DeviceDirectory


@contextmanager
def recording_nodes(directory: DeviceDirectory) -> Iterator[DeviceDirectory]:
    """Within the block, node registrations of the simulation engine fill ``directory``."""
    original = vce_api._register_nodes

    def register(num_nodes, state_factory):
        mapping = original(num_nodes=num_nodes, state_factory=state_factory)
        directory.set_mapping(mapping)
        return mapping

    vce_api._register_nodes = register
    try:
        yield directory
    finally:
        vce_api._register_nodes = original
