"""The Flower ``ServerApp``: the cloud side of a federated run.

:func:`run_server` drives one run directory (``shoal.server.setup.prepare_run``): it builds
the configured strategy, starts from the strategy's initial model or the run's last
checkpoint, waits for the devices, runs the rounds (:mod:`shoal.server.loop`) and writes the
final model, ``summary.json`` and plots. ``shoal simulate`` wraps it in a ServerApp with
:func:`make_server_app`; the module-level ``app`` is the entry point for ``flwr run .``,
which reads Shoal config overrides from the Flower run config (``[tool.flwr.app.config]``,
keys like ``"fed.rounds"``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

import shoal.strategies  # noqa: F401  (registers the built-in strategies)
from shoal.client.checkpoint import save_reranker
from shoal.client.models import build_model
from shoal.config import load_config
from shoal.datasets import storage
from shoal.datasets.splits import BUCKETS
from shoal.metrics import MetricSums
from shoal.registry import STRATEGIES
from shoal.runs import write_json
from shoal.server.loop import run_rounds
from shoal.server.outputs import RunRecorder, load_checkpoint, read_metrics
from shoal.server.progress import RoundProgress
from shoal.server.setup import initial_model, open_run_dir, prepare_run
from shoal.strategies.sampling import DeviceDirectory

logger = logging.getLogger("shoal.server")


def _wait_for_nodes(grid: Grid, n: int, directory: DeviceDirectory | None, timeout: float):
    """Wait for the simulation's ``n`` nodes, or (no directory: ``flwr run``) until the
    number of connected nodes has been stable for two seconds."""
    end = time.monotonic() + timeout
    if directory is not None:
        directory.wait(timeout)
        while len(list(grid.get_node_ids())) < n:
            if time.monotonic() > end:
                raise TimeoutError(f"only {len(list(grid.get_node_ids()))} of {n} devices up")
            time.sleep(0.05)
        return
    seen, since = -1, time.monotonic()
    while time.monotonic() < end:
        now = len(list(grid.get_node_ids()))
        if now != seen:
            seen, since = now, time.monotonic()
        elif now > 0 and time.monotonic() - since > 2.0:
            return
        time.sleep(0.1)
    raise TimeoutError("no devices connected")


def run_server(
    grid: Grid,
    run_dir: str | Path,
    directory: DeviceDirectory | None = None,
    progress: bool = True,
) -> dict:
    """Run (or continue) the federated run in ``run_dir``; returns its summary."""
    run_dir = Path(run_dir)
    cfg, meta = open_run_dir(run_dir)
    fed = cfg.fed
    if cfg.train.threads:  # cloud-side training; one thread is fastest for these GRUs
        torch.set_num_threads(cfg.train.threads)
    strategy = STRATEGIES.get(fed.strategy)(cfg, str(run_dir), directory)
    ckpt = load_checkpoint(run_dir, fed.strategy)
    t_start = time.perf_counter()
    if ckpt is not None:
        arrays = ArrayRecord(ckpt["arrays"])
        strategy.load_state_dict(ckpt["strategy_state"])
        first = int(ckpt["round"]) + 1
        logger.info("resuming %s after round %d", run_dir, first - 1)
    else:
        kind = strategy.init if strategy.init != "cloud" else fed.init
        model = initial_model(kind, cfg, meta["data_dir"])
        arrays = ArrayRecord({k: v.detach() for k, v in model.state_dict().items()})
        first = 1
    log = storage.load(meta["data_dir"], mmap=True)
    template = build_model(cfg.model, log.schema, log.n_items)
    strategy.param_keys = {n for n, _ in template.named_parameters()}
    strategy.n_devices = meta["devices"]
    setup_seconds = time.perf_counter() - t_start
    recorder = RunRecorder(run_dir, fed.strategy, completed=first - 1)
    _wait_for_nodes(grid, meta["devices"], directory, timeout=max(60.0, fed.timeout))
    with RoundProgress(fed.strategy, fed.rounds, first, enabled=progress) as bar:
        stop = getattr(strategy, "should_stop", None)
        res = run_rounds(
            strategy, grid, arrays, fed, recorder, first, on_round=bar.update, should_stop=stop
        )
    template.load_state_dict(res.arrays.to_torch_state_dict())
    return finish(run_dir, template, log, cfg, meta, setup_seconds, res)


PRIVACY_METRICS = (
    "epsilon",
    "delta",
    "clipping_norm",
    "noise_multiplier",
    "local_epsilon_max",
    "local_epsilon_median",
)


def last_value(rows: list[dict], metric: str) -> float | None:
    """Value of ``metric`` (bucket all) in the latest round that has it."""
    vals = [(r["round"], r["value"]) for r in rows if r["metric"] == metric]
    return max(vals)[1] if vals else None


def finish(run_dir: Path, model, log, cfg, meta: dict, setup_s: float, res) -> dict:
    """Write ``model.pt`` (``model`` holds the final weights), ``summary.json`` and plots."""
    last = res.last_round
    save_reranker(model, cfg.model, log.schema, log.n_items, run_dir / "model.pt")
    rows = read_metrics(run_dir)
    final: dict[str, dict[str, float]] = {}
    evals = [r for r in rows if r["metric"] == "gauc"]
    last_eval = max((r["round"] for r in evals), default=None)
    names = set(MetricSums.zeros(BUCKETS).finalize())
    for r in rows:
        if r["round"] == last_eval and r["metric"] in names:
            final.setdefault(r["metric"], {})[r["bucket"]] = r["value"]
    evaluated = {r["round"]: r["value"] for r in rows if r["metric"] == "eval_devices"}
    if last_eval is not None and not evaluated.get(last_eval, 0):
        failed = last_value(rows, "eval_failures")
        raise ValueError(
            f"every device failed the final evaluation (round {last_eval}, {failed or 0:.0f} "
            f"failures, see the log); {run_dir} keeps metrics.csv and model.pt but no "
            "summary.json: fix the cause and delete the run directory to run it again"
        )
    per_round = {
        m: sum(r["value"] for r in rows if r["metric"] == m)
        for m in ("bytes_up", "bytes_down", "round_seconds", "failures")
    }
    summary = {
        "strategy": cfg.fed.strategy,
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "devices": meta["devices"],
        "rounds": last,
        "setup_seconds": setup_s,
        "final_eval_round": last_eval,
        "final": final,
        "totals": per_round,
        "device_bytes": model.device.size_bytes(),
    }
    privacy = {m: last_value(rows, m) for m in PRIVACY_METRICS}
    privacy = {m: v for m, v in privacy.items() if v is not None}
    if privacy:
        summary["privacy"] = privacy
    if res.stopped_early:
        summary["stopped_early"] = True
    write_json(run_dir / "summary.json", summary)
    from shoal.server.plots import plot_run

    plot_run(run_dir)
    return summary


def make_server_app(
    run_dir: str | Path, directory: DeviceDirectory | None = None, progress: bool = True
) -> ServerApp:
    """A ServerApp that runs the prepared run directory ``run_dir``."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, run_dir, directory, progress)

    return server


app = ServerApp()


@app.main()
def flwr_main(grid: Grid, context: Context) -> None:
    """``flwr run .``: Shoal overrides come from the Flower run config."""
    overrides = [f"{k}={v}" for k, v in context.run_config.items()]
    cfg = load_config(overrides=overrides)
    if cfg.fed.resume:
        run_dir = Path(cfg.fed.resume)
    else:
        run_dir = prepare_run(cfg)
    summary = run_server(grid, run_dir, None, progress=False)
    logger.warning("shoal run finished: %s %s", run_dir, json.dumps(summary.get("final", {})))
