"""``DeviceStrategy``: the Flower ``Strategy`` hooks every Shoal strategy shares.

A Shoal strategy is a Flower :class:`~flwr.serverapp.strategy.Strategy`; subclasses set
which device tasks run (``train_task``, ``eval_task``, see :mod:`shoal.client.tasks`), which
model the server starts from (``init``), and override :meth:`aggregate_arrays` or the hooks
when they do more than average.

What the base class adds to Flower's ``FedAvg`` hooks:

* seeded device sampling (:mod:`shoal.strategies.sampling`), identical across strategies;
* fault tolerance: a reply that is an error, or has missing, extra, mis-shaped or
  non-finite entries, is excluded, logged and counted; a round aggregates only when at
  least ``min_devices`` replies are valid, otherwise the global model is kept;
* exact evaluation: per-device metric sums are added before the metrics are computed;
* ``state_dict`` / ``load_state_dict`` for resume.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from shoal.config import FedConfig, ShoalConfig
from shoal.metrics import DEFAULT_KS, MetricSums
from shoal.strategies import aggregate as agg
from shoal.strategies.sampling import (
    EVALUATE,
    TRAIN,
    DeviceDirectory,
    SortedNodes,
    sample_devices,
)

logger = logging.getLogger("shoal.strategy")
BUCKETS = ("tail", "torso", "head")


class DeviceStrategy(Strategy):
    """Shared hooks; see the module docstring. Not registered itself.

    Parameters
    ----------
    cfg : ShoalConfig
        The run's config (``fed``: sampling, rounds; ``seed``: seeds device sampling).
    run_dir : str
        The run directory devices open (``shoal.server.setup``).
    directory : DeviceDirectory, optional
        Node ↔ device ids of a simulation; without it devices are numbered by sorted node id.
    """

    name = "base"
    train_task: str | None = "fit"
    """Device task of training rounds (None: no device training)."""
    eval_task = "evaluate"
    init = "cloud"
    """Initial model the server builds: ``cloud``, ``pooled`` or ``random`` (``fed.init``
    overrides ``cloud``)."""
    returns_arrays = True
    """Whether ``train_task`` replies with weights to aggregate."""

    def __init__(
        self, cfg: ShoalConfig, run_dir: str, directory: DeviceDirectory | None = None
    ) -> None:
        self.cfg = cfg
        self.fed: FedConfig = cfg.fed
        self.seed = cfg.seed
        self.param_keys: set[str] | None = None
        """Names of trainable parameters (set by the server); other arrays are buffers."""
        self.run_dir = str(run_dir)
        self.directory = directory
        self.n_devices: int | None = None
        self._expect: agg.Layout | None = None
        self.last_round: dict[str, float] = {}
        self._eval_sent = 0

    # --- sampling and messages ------------------------------------------------------------

    def _dir(self, grid: Grid) -> DeviceDirectory | SortedNodes:
        if self.directory is not None:
            return self.directory
        return SortedNodes(grid.get_node_ids())

    def _messages(
        self, grid: Grid, devices, task: str, rnd: int, arrays: ArrayRecord, kind: str
    ) -> list[Message]:
        d = self._dir(grid)
        out = []
        for dev, node in zip(devices, d.nodes(devices)):
            cfg = {"task": task, "round": rnd, "run-dir": self.run_dir}
            if d.knows_devices:
                cfg["device"] = int(dev)
            content = RecordDict({"arrays": arrays, "config": ConfigRecord(cfg)})
            out.append(Message(content=content, message_type=kind, dst_node_id=node))
        return out

    def sample(self, grid: Grid, rnd: int, purpose: int):
        n = self._dir(grid).n_devices
        self.n_devices = n
        frac = self.fed.fraction if purpose == TRAIN else self.fed.eval_fraction
        return sample_devices(n, frac, self.seed, rnd if purpose == TRAIN else 0, purpose)

    # --- Flower Strategy hooks ------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.train_task is None:
            self.last_round = {"sampled": 0}
            return []
        devices = self.sample(grid, server_round, TRAIN)
        self._expect = agg.layout(arrays) if self.returns_arrays else None
        self.last_round = {"sampled": len(devices)}
        return self._messages(
            grid, devices, self.train_task, server_round, arrays, MessageType.TRAIN
        )

    def _valid(
        self, replies: Iterable[Message], expect, keys, what: str
    ) -> tuple[list[Message], int]:
        valid, failures = [], 0
        for msg in replies:
            why = agg.reply_problem(msg, expect, keys)
            if why is None:
                valid.append(msg)
            else:
                failures += 1
                node = msg.metadata.src_node_id
                logger.warning("%s: excluded reply from node %s: %s", what, node, why)
        return sorted(valid, key=lambda m: m.metadata.src_node_id), failures

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid, bad = self._valid(replies, self._expect, {"train_loss"}, "train")
        sampled = int(self.last_round.get("sampled", len(replies)))
        failures = bad + (sampled - len(replies))  # errors, bad replies and timeouts
        recs = [m.content.metric_records["metrics"] for m in valid]
        n = [float(r[agg.NUM_EXAMPLES]) for r in recs]
        total = sum(n)
        metrics = {"sampled": sampled, "replied": len(valid), "failures": failures}
        metrics["examples"] = total
        if total > 0:
            metrics["train_loss"] = sum(w * r["train_loss"] for w, r in zip(n, recs)) / total
        eps = [float(r["local_epsilon"]) for r in recs if "local_epsilon" in r]
        if eps:  # on-device DP-SGD: cumulative ε of the devices that trained this round
            metrics["local_epsilon_max"] = max(eps)
            metrics["local_epsilon_median"] = float(np.median(eps))
        self.last_round = metrics
        if self.train_task is None:  # no device trains by design (cloud-only, centralized)
            return None, MetricRecord(metrics)
        if len(valid) < self.fed.min_devices:
            logger.warning(
                "round %d: %d valid replies < min_devices=%d; global model kept",
                server_round,
                len(valid),
                self.fed.min_devices,
            )
            metrics["failed_round"] = 1
            return None, MetricRecord(metrics)
        arrays = self.aggregate_arrays(server_round, valid) if self.returns_arrays else None
        return arrays, MetricRecord(metrics)

    def aggregate_arrays(self, server_round: int, valid: list[Message]) -> ArrayRecord | None:
        """FedAvg of the valid replies' weights, weighted by ``num-examples`` (``fed.weighting``
        ``examples`` or ``auto``) or equally (``equal``); None if every weight is 0."""
        recs = [m.content for m in valid]
        if self.fed.weighting == "equal":
            w = [1.0] * len(recs)
        else:
            w = [float(c.metric_records["metrics"][agg.NUM_EXAMPLES]) for c in recs]
        if sum(w) <= 0:
            return None
        return agg.weighted_average([c.array_records["arrays"] for c in recs], w)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        devices = self.sample(grid, server_round, EVALUATE)
        self._eval_sent = len(devices)
        return self._messages(
            grid, devices, self.eval_task, server_round, arrays, MessageType.EVALUATE
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        keys = set(MetricSums.zeros(BUCKETS, DEFAULT_KS).to_record())
        valid, bad = self._valid(replies, None, keys, "evaluate")
        recs = [m.content.metric_records["metrics"] for m in valid]
        sums = agg.sum_metric_sums(recs, BUCKETS, DEFAULT_KS)
        out = agg.flatten_metrics(sums.finalize())
        out["eval_devices"] = len(valid)
        out["eval_failures"] = bad + (self._eval_sent - len(replies))
        return MetricRecord(out)

    def summary(self) -> None:
        logger.info(
            "%s: train task %s, eval task %s, fraction %.3f, min devices %d",
            self.name,
            self.train_task,
            self.eval_task,
            self.fed.fraction,
            self.fed.min_devices,
        )

    # --- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Server-side state to checkpoint with the global model (none for plain FedAvg)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, got keys {sorted(state)}")
