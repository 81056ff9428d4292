"""Cloud-side training of a reranker on pooled requests: Adam, early stopping on validation GAUC.

This is the centralized baseline (``shoal train``) and the cloud step of strategies that train
on cloud history.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from shoal.client.models.reranker import Reranker, score_stats
from shoal.client.training import SeqLens, evaluate, per_page_sample, train_epoch
from shoal.config import TrainConfig
from shoal.datasets.requests import RequestLog
from shoal.datasets.splits import TEST, assign_splits


@dataclass
class FitResult:
    """What :func:`fit` did: per-epoch history and the epoch whose weights were kept."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_gauc: float = float("nan")
    seconds: float = 0.0
    stopped_early: bool = False


def validation_split(
    log: RequestLog, idx: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out a seeded ``fraction`` of the pages (slates) of requests ``idx``.

    Whole pages move together: requests of one page share labelled candidates, so a
    per-request split would leak labels into validation (``datasets/splits.py``).

    Returns
    -------
    train, val : np.ndarray
        Request indices, each sorted.
    """
    slates = np.unique(log.req_slate[idx])
    n_val = round(fraction * slates.size)
    if slates.size >= 2:
        n_val = min(max(n_val, 1), slates.size - 1)
    val_slates = rng.choice(slates, size=n_val, replace=False)
    is_val = np.isin(log.req_slate[idx], val_slates)
    return np.sort(idx[~is_val]), np.sort(idx[is_val])


def training_requests(log: RequestLog, split: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) request indices: cloud history + device-fresh pooled, and test."""
    return np.flatnonzero(split != TEST), np.flatnonzero(split == TEST)


def fit(
    model: Reranker,
    log: RequestLog,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: TrainConfig,
    seq: SeqLens,
    rng: np.random.Generator,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> FitResult:
    """Train ``model`` in place; on return it holds the weights of the best validation epoch.

    Parameters
    ----------
    model : Reranker
    log : RequestLog
    train_idx, val_idx : np.ndarray
        Request indices to train on and to pick the epoch by (validation GAUC on click).
    cfg : TrainConfig
    seq : SeqLens
    rng : np.random.Generator
        Shuffling.
    on_epoch : callable, optional
        Called with each epoch's record (epoch, loss, val_gauc, seconds).
    """
    if train_idx.size == 0:
        raise ValueError("no training requests")
    start = time.perf_counter()
    stats_idx = train_idx[: min(train_idx.size, 4096)]
    model.device.set_score_stats(*score_stats(log.batch(stats_idx, 1, 1)))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    zero_bucket = np.zeros(log.n_users, np.int8)
    res = FitResult()
    best_state = copy.deepcopy(model.state_dict())
    bad = 0
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        epoch_idx = per_page_sample(log, train_idx, cfg.per_page, rng)
        loss = train_epoch(
            model, opt, log, epoch_idx, cfg.batch, seq, rng, cfg.grad_clip, cfg.listwise
        )
        val = evaluate(model, log, val_idx, zero_bucket, cfg.eval_batch, seq).finalize()
        rec = {
            "epoch": epoch,
            "loss": loss,
            "val_gauc": val["gauc"]["all"],
            "val_logloss": val["logloss"]["all"],
            "seconds": time.perf_counter() - t0,
        }
        res.history.append(rec)
        if on_epoch is not None:
            on_epoch(rec)
        if np.isnan(res.best_val_gauc) or rec["val_gauc"] > res.best_val_gauc:
            res.best_val_gauc, res.best_epoch, bad = rec["val_gauc"], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                res.stopped_early = True
                break
    model.load_state_dict(best_state)
    res.seconds = time.perf_counter() - start
    return res


def make_splits(log: RequestLog, split_cfg, train_cfg: TrainConfig, seed: int):
    """Train / validation / test request indices of a centralized run (seeded)."""
    split = assign_splits(log, split_cfg)
    train, test = training_requests(log, split)
    rng = np.random.default_rng([seed, 31])
    if train_cfg.max_requests and train.size > train_cfg.max_requests:
        train = np.sort(rng.choice(train, size=train_cfg.max_requests, replace=False))
    train, val = validation_split(log, train, train_cfg.val_fraction, rng)
    return train, val, test
