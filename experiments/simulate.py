"""``shoal simulate``: a federated run on Flower's simulation engine (Ray backend).

One Flower node per device. The run directory is prepared first (config, dataset cache,
``run.json``); then ``flwr.simulation.run_simulation`` runs the ServerApp of
:mod:`shoal.server.app` against the device ClientApp of :mod:`shoal.client.app`, with
node registrations recorded for seeded device sampling and the engine's per-message costs
cut by :func:`shoal.server.fastsim.fast_simulation`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from flwr.clientapp import ClientApp
from flwr.simulation import run_simulation

from shoal.client.app import app as device_app
from shoal.config import ShoalConfig
from shoal.server.app import make_server_app
from shoal.server.fastsim import fast_simulation
from shoal.server.nodes import recording_nodes
from shoal.server.setup import open_run_dir, prepare_run
from shoal.strategies.sampling import DeviceDirectory


def backend_config(actors: int) -> dict:
    """One CPU per ClientApp actor (more actors than cores only oversubscribe)."""
    cpus = os.cpu_count() or 1
    n = actors if actors > 0 else cpus
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": n, "include_dashboard": False, "log_to_driver": False},
    }


def quiet_flower() -> None:
    """Flower logs every round at INFO; the progress display replaces that."""
    logging.getLogger("flwr").setLevel(logging.WARNING)


def simulate(
    cfg: ShoalConfig,
    client_app: ClientApp | None = None,
    progress: bool = True,
) -> tuple[Path, dict]:
    """Run ``cfg`` (or resume ``cfg.fed.resume``) in simulation; returns (run_dir, summary).

    Parameters
    ----------
    cfg : ShoalConfig
    client_app : ClientApp, optional
        The device app (default :data:`shoal.client.app.app`); tests pass one with mods that
        inject faults.
    progress : bool
        Show the live round display.
    """
    if cfg.fed.resume:  # the saved config wins: a resumed run is the same run
        run_dir = Path(cfg.fed.resume).resolve()
        cfg, _ = open_run_dir(run_dir)
    else:
        run_dir = prepare_run(cfg)
    _, meta = open_run_dir(run_dir)
    quiet_flower()
    directory = DeviceDirectory()
    server = make_server_app(run_dir, directory, progress)
    with fast_simulation(), recording_nodes(directory):
        run_simulation(
            server_app=server,
            client_app=client_app or device_app,
            num_supernodes=meta["devices"],
            backend_config=backend_config(cfg.fed.actors),
        )
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise RuntimeError(f"the simulation ended without finishing {run_dir}; see the log")
    return run_dir, json.loads(summary_path.read_text())
