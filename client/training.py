"""Training and evaluation steps of a reranker on a set of requests.

The same functions train a model on one device's own requests (federated local training) and
on pooled data in the cloud (:mod:`shoal.server.training`). Evaluation returns additive metric
sums (:class:`shoal.metrics.MetricSums`), so per-device results aggregate exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from shoal.client.models.reranker import Reranker, batch_tensors, labelled_index, task_targets
from shoal.datasets.requests import RequestLog, RerankBatch
from shoal.metrics import BUCKET_NAMES, DEFAULT_KS, MetricSums, ranking_sums


@dataclass(frozen=True)
class SeqLens:
    """Behaviour sequence caps used when gathering batches."""

    ie: int = 50
    ipv: int = 20


def iterate_batches(
    log: RequestLog,
    idx: np.ndarray,
    batch: int,
    seq: SeqLens,
    rng: np.random.Generator | None = None,
) -> Iterator[RerankBatch]:
    """Gathered batches of ``batch`` requests; shuffled when ``rng`` is given, else in order."""
    idx = np.asarray(idx, dtype=np.int64)
    order = rng.permutation(idx) if rng is not None else idx
    for s in range(0, order.size, batch):
        yield log.batch(order[s : s + batch], seq.ie, seq.ipv)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's parameters live (batches are moved there)."""
    return next(model.parameters()).device


def batch_loss(
    model: Reranker, b: RerankBatch, schema, listwise: float = 0.0
) -> tuple[torch.Tensor, int]:
    """Training loss of a batch and its number of labelled candidates.

    Loss = mean binary cross-entropy over observed candidates and tasks (EdgeRec's pointwise
    loss) + ``listwise`` × mean over requests with both clicks and non-clicks of the softmax
    cross-entropy of the click logits, ``-Σ_i y_i log softmax(z)_i / Σ_i y_i`` over the
    request's labelled candidates (ListNet-style; it targets the within-request order that
    GAUC measures). With no labelled candidate the loss is a zero tensor that keeps a graph.
    """
    dev = model_device(model)
    tb = batch_tensors(b, dev)
    sel, sel_mask = labelled_index(b.label_mask)  # (B, J): score only labelled candidates
    logits = model(tb, torch.from_numpy(sel).to(dev))  # (B, J, T)
    target, mask = task_targets(b, model.tasks, schema)  # (B, K, T)
    rows = np.arange(sel.shape[0])[:, None]
    target, mask = target[rows, sel], mask[rows, sel] & sel_mask[..., None]  # (B, J, T)
    m = torch.from_numpy(mask).to(dev)
    y = torch.from_numpy(target).to(dev)
    n = int(b.label_mask.sum())
    if n == 0:
        return logits.sum() * 0.0, 0
    loss = F.binary_cross_entropy_with_logits(logits[m], y[m])
    if listwise > 0:
        loss = loss + listwise * softmax_ce(logits[..., 0], y[..., 0], m[..., 0])
    return loss, n


def softmax_ce(z: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over rows with both classes of ``-Σ_i y_i log softmax(z)_i / Σ_i y_i``.

    z, y (B, J) float, mask (B, J) bool → scalar (0 if no row has both classes).
    """
    pos = (y * mask).sum(1)  # (B,)
    ok = (pos > 0) & (pos < mask.sum(1))
    if not bool(ok.any()):
        return z.sum() * 0.0
    logp = torch.log_softmax(z.masked_fill(~mask, -1e9), dim=1)  # (B, J)
    per_row = -(y * mask * logp).sum(1) / pos.clamp(min=1)
    return per_row[ok].mean()


def train_epoch(
    model: Reranker,
    opt: torch.optim.Optimizer,
    log: RequestLog,
    idx: np.ndarray,
    batch: int,
    seq: SeqLens,
    rng: np.random.Generator,
    grad_clip: float = 0.0,
    listwise: float = 0.0,
) -> float:
    """One pass over ``idx`` in shuffled mini-batches; returns the candidate-weighted mean
    loss. Raises ValueError if the loss becomes NaN or infinite (the model is left as it was
    after the last finite step)."""
    model.train()
    total, count = 0.0, 0
    for b in iterate_batches(log, idx, batch, seq, rng):
        loss, n = batch_loss(model, b, log.schema, listwise)
        if n == 0:
            continue
        if not torch.isfinite(loss):
            raise ValueError(f"training loss became {loss.item()} (learning rate too high?)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        total += float(loss.detach()) * n
        count += n
    return total / max(count, 1)


@dataclass
class Predictions:
    """Flat predictions over labelled candidates (N of them)."""

    score: np.ndarray  # (N,) float64 ranking score (descending = displayed order)
    prob: np.ndarray  # (N,) float64 click probability
    label: np.ndarray  # (N,) int8 click
    request: np.ndarray  # (N,) int64
    user: np.ndarray  # (N,) int64


@torch.no_grad()
def predict(model: Reranker, log: RequestLog, idx: np.ndarray, batch: int, seq: SeqLens):
    """Scores and click probabilities of the labelled candidates of requests ``idx``."""
    model.eval()
    parts: list[tuple[np.ndarray, ...]] = []
    for b in iterate_batches(log, idx, batch, seq):
        tb = batch_tensors(b, model_device(model))
        logits = model(tb)  # (B, K, T)
        score = model.order_scores(logits, tb["cand_mask"]).double().cpu().numpy()  # (B, K)
        prob = torch.sigmoid(logits[..., 0].double()).cpu().numpy()
        m = b.label_mask
        req = np.broadcast_to(b.request[:, None], m.shape)
        usr = np.broadcast_to(b.user[:, None], m.shape)
        parts.append((score[m], prob[m], b.click[m], req[m], usr[m].astype(np.int64)))
    if not parts:
        z = np.zeros(0)
        return Predictions(z, z, z.astype(np.int8), z.astype(np.int64), z.astype(np.int64))
    cols = [np.concatenate(c) for c in zip(*parts)]
    return Predictions(*cols)


def evaluate(
    model: Reranker,
    log: RequestLog,
    idx: np.ndarray,
    user_bucket: np.ndarray,
    batch: int,
    seq: SeqLens,
    buckets: tuple[str, ...] = BUCKET_NAMES,
    ks: tuple[int, ...] = DEFAULT_KS,
) -> MetricSums:
    """Metric sums of the model on requests ``idx``; ``user_bucket`` (U,) is each user's
    activity bucket index."""
    p = predict(model, log, idx, batch, seq)
    return ranking_sums(
        p.score, p.label, p.request, p.user, user_bucket[p.user], p.prob, buckets=buckets, ks=ks
    )


def per_page_sample(
    log: RequestLog, idx: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """At most ``k`` random requests of each page among ``idx`` (all of them if ``k == 0``)."""
    if k <= 0:
        return idx
    perm = rng.permutation(idx)
    slate = log.req_slate[perm]
    order = np.argsort(slate, kind="stable")  # random order kept within each page
    s = slate[order]
    first = np.r_[True, s[1:] != s[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(s.size), 0))
    keep = (np.arange(s.size) - start) < k
    return np.sort(perm[order[keep]])
