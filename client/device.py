"""One device's side of a federated run: its data, its model and its local steps.

A run directory (written by the server, see ``shoal.server.setup``) holds ``config.yaml``
and ``run.json`` naming the dataset folder. A device opens the run once per process
(:func:`open_run`, cached by path and modification time: the cache holds read-only data and
a model template whose weights every task overwrites, so nothing leaks between devices or
runs) and reads only its own partition: device-fresh requests to train, test requests to
evaluate.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord

from shoal.client.models import build_model
from shoal.client.models.reranker import Reranker
from shoal.client.training import SeqLens, evaluate, per_page_sample, train_epoch
from shoal.config import FedConfig, ShoalConfig, load_config
from shoal.datasets import storage
from shoal.datasets.requests import RequestLog
from shoal.datasets.splits import BUCKETS, Partitions, activity_buckets, assign_splits
from shoal.metrics import MetricSums

RUN_FILE = "run.json"


@dataclass(frozen=True)
class DeviceRun:
    """What every device of a run shares (read-only)."""

    run_dir: Path
    cfg: ShoalConfig
    log: RequestLog
    parts: Partitions
    bucket: np.ndarray  # (U,) activity bucket index of each user
    seq: SeqLens
    stamp: tuple[int, int]  # modification times of config.yaml and run.json

    def requests(self, device: int, split: str) -> np.ndarray:
        """Request indices of one device's split (``device`` or ``test``), time-ordered.

        A device beyond the data (a node without a partition, e.g. ``flwr run`` with more
        SuperNodes than users) has an empty log: it trains and evaluates nothing.
        """
        if device >= self.parts.num_partitions:
            return np.zeros(0, dtype=np.int64)
        return self.parts.requests(device, split)


def open_run(run_dir: str | Path) -> DeviceRun:
    """The run at ``run_dir`` (cached per process by path and file modification times)."""
    run_dir = Path(run_dir).resolve()
    try:
        stamp = (
            (run_dir / "config.yaml").stat().st_mtime_ns,
            (run_dir / RUN_FILE).stat().st_mtime_ns,
        )
    except FileNotFoundError:
        raise ValueError(
            f"{run_dir} is not a Shoal run directory (config.yaml, run.json)"
        ) from None
    return _open_run(str(run_dir), stamp)


@functools.lru_cache(maxsize=2)
def _open_run(run_dir: str, stamp: tuple[int, int]) -> DeviceRun:
    path = Path(run_dir)
    cfg = load_config(files=[path / "config.yaml"])
    meta = json.loads((path / RUN_FILE).read_text())
    log = storage.load(meta["data_dir"], mmap=True)
    parts = Partitions(log, assign_splits(log, cfg.split))
    bucket, _ = activity_buckets(log, cfg.activity)
    seq = SeqLens(cfg.seq.ie_len, cfg.seq.ipv_len)
    return DeviceRun(path, cfg, log, parts, bucket, seq, stamp)


@functools.lru_cache(maxsize=1)
def _template(run_dir: str, stamp: tuple[int, int]) -> Reranker:
    run = _open_run(run_dir, stamp)
    return build_model(run.cfg.model, run.log.schema, run.log.n_items)


def model_with(run: DeviceRun, state: dict[str, torch.Tensor] | ArrayRecord) -> Reranker:
    """The run's reranker holding ``state`` (every parameter and buffer is overwritten).

    Raises
    ------
    ValueError
        ``state`` does not fit the model (missing, unexpected or mis-shaped entries): a model
        of another version or configuration.
    """
    model = _template(str(run.run_dir), run.stamp)
    sd = state.to_torch_state_dict() if isinstance(state, ArrayRecord) else state
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(f"received model does not match this device's model: {e}") from None
    return model


def model_arrays(model: Reranker) -> ArrayRecord:
    """The model's full state (parameters and buffers) as a Flower ArrayRecord."""
    return ArrayRecord({k: v.detach().cpu() for k, v in model.state_dict().items()})


def device_rng(seed: int, round: int, device: int, purpose: int) -> np.random.Generator:
    """Generator for one device's work in one round (independent of run order)."""
    return np.random.default_rng([seed, round, device, purpose])


def local_train(
    model: Reranker, run: DeviceRun, device: int, round: int, epochs: int
) -> tuple[float, int]:
    """Train ``model`` in place on the device-fresh requests of ``device``.

    Returns
    -------
    loss : float
        Candidate-weighted mean loss of the last epoch (nan when the device has no data).
    requests : int
        Number of device-fresh requests (0: nothing was trained).
    """
    fed: FedConfig = run.cfg.fed
    idx = run.requests(device, "device")
    if idx.size == 0 or epochs == 0:
        return float("nan"), int(idx.size)
    rng = device_rng(run.cfg.seed, round, device, 1)
    torch.manual_seed(int(rng.integers(2**31)))
    params = [p for p in model.parameters() if p.requires_grad]
    if fed.local_optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=fed.local_lr)
    else:
        opt = torch.optim.Adam(params, lr=fed.local_lr)
    loss = float("nan")
    for _ in range(epochs):
        ep = per_page_sample(run.log, idx, fed.local_per_page, rng)
        loss = train_epoch(
            model,
            opt,
            run.log,
            ep,
            fed.local_batch,
            run.seq,
            rng,
            run.cfg.train.grad_clip,
            run.cfg.train.listwise,
        )
    return loss, int(idx.size)


def local_evaluate(model: Reranker, run: DeviceRun, device: int) -> MetricSums:
    """Metric sums of ``model`` on the test requests of ``device``."""
    idx = run.requests(device, "test")
    if idx.size == 0:
        return MetricSums.zeros(BUCKETS)
    return evaluate(model, run.log, idx, run.bucket, run.cfg.train.eval_batch, run.seq, BUCKETS)
