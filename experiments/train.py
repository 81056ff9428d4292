"""``shoal train``: centralized training of one reranker, the non-private upper bound.

Trains on every user's cloud-history and device-fresh requests pooled (a seeded share of the
pages held out for early stopping), evaluates on the test split overall and by activity
bucket, and writes ``<out_dir>/<timestamp>-train-<model>/`` with ``config.yaml``,
``metrics.json`` and ``model.pt``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shoal.client.checkpoint import save_reranker
from shoal.client.models import build_model
from shoal.client.models.reranker import Reranker
from shoal.client.training import SeqLens, evaluate
from shoal.config import ShoalConfig
from shoal.datasets import load_dataset
from shoal.datasets.requests import RequestLog
from shoal.datasets.splits import BUCKETS, activity_buckets
from shoal.runs import make_run_dir, write_json
from shoal.server.training import fit, make_splits


def torch_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; other names as given (must exist)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device={name} but no CUDA device is available")
    return torch.device(name)


@dataclass
class TrainOutcome:
    """Result of :func:`train`: the model, test metrics, fit history, run directory."""

    model: Reranker
    test: dict[str, dict[str, float]]
    summary: dict[str, Any]
    run_dir: Path | None


def train(
    cfg: ShoalConfig,
    log: RequestLog | None = None,
    write: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainOutcome:
    """Train ``cfg.model.name`` on ``cfg.dataset`` (or the given log) and evaluate on test.

    Seeds: model init from ``torch.manual_seed(cfg.seed)``; validation pages, request cap and
    shuffling from generators derived from ``cfg.seed``.
    """
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    log = log if log is not None else load_dataset(cfg)
    seq = SeqLens(cfg.seq.ie_len, cfg.seq.ipv_len)
    train_idx, val_idx, test_idx = make_splits(log, cfg.split, cfg.train, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, log.schema, log.n_items).to(torch_device(cfg.train.device))
    rng = np.random.default_rng([cfg.seed, 32])
    res = fit(model, log, train_idx, val_idx, cfg.train, seq, rng, on_epoch)
    bucket, thresholds = activity_buckets(log, cfg.activity)
    model.cpu()  # evaluate and save on the CPU, as a device would run it
    t0 = time.perf_counter()
    test = evaluate(model, log, test_idx, bucket, cfg.train.eval_batch, seq, BUCKETS).finalize()
    summary = {
        "model": cfg.model.name,
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "requests": {"train": train_idx.size, "val": val_idx.size, "test": test_idx.size},
        "activity_thresholds": thresholds.tolist(),
        "device_bytes": model.device.size_bytes(),
        "cloud_bytes": sum(p.numel() * p.element_size() for p in model.cloud.parameters()),
        "fit": dataclasses.asdict(res),
        "eval_seconds": time.perf_counter() - t0,
        "test": test,
    }
    run_dir = None
    if write:
        run_dir = make_run_dir(cfg, f"train-{cfg.model.name}")
        write_json(run_dir / "metrics.json", summary)
        save_reranker(model, cfg.model, log.schema, log.n_items, run_dir / "model.pt")
    return TrainOutcome(model, test, summary, run_dir)
