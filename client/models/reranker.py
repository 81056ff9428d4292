"""A reranker = the cloud part (embedding tables) + the device network.

:class:`Reranker` is what trains (end to end, in the cloud or federated); at serving time the
cloud runs :meth:`Reranker.ship` (embedding lookups, shipped with the page) and the device runs
``Reranker.device`` on what it received plus its own behaviour log.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from shoal.client.models.base import DeviceNetwork
from shoal.client.models.cloud import CloudEmbeddings
from shoal.datasets.requests import RerankBatch
from shoal.datasets.schema import Schema

HAS_NEXT = "has_next"
"""Derived task: the user went on past this candidate (a later candidate of the request was
exposed). Kuaishou's has-next head."""


class Reranker(nn.Module):
    """Cloud part + device network of one model.

    Parameters
    ----------
    name : str
        Registered model name.
    cloud : CloudEmbeddings
    device : DeviceNetwork
    """

    def __init__(self, name: str, cloud: CloudEmbeddings, device: DeviceNetwork):
        super().__init__()
        self.name = name
        self.cloud = cloud
        self.device = device

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.device.tasks

    def ship(self, tb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The cloud's lookups: device-network inputs (``base.INPUT_NAMES`` order)."""
        return (
            self.cloud(tb["cand_item"], tb["cand_feat"]),  # (B, K, D)
            tb["cand_score"],
            tb["cand_mask"],
            self.cloud(tb["ie_item"], tb["ie_feat"]),  # (B, m, D)
            tb["ie_act"],
            tb["ie_mask"],
            self.cloud(tb["ipv_item"], tb["ipv_feat"]),  # (B, n, D)
            tb["ipv_act"],
            tb["ipv_mask"],
        )

    def forward(
        self, tb: dict[str, torch.Tensor], select: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B, K, T) of every task; (B, J, T) for the candidates ``select`` (B, J)."""
        return self.device(*self.ship(tb), select=select)

    def order_scores(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, K) scores whose descending order is the displayed order."""
        return self.device.order_scores(logits, mask)


def batch_tensors(
    batch: RerankBatch, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Model inputs of a gathered batch as torch tensors (ids int64, masks bool) on ``device``."""
    out = {
        "cand_item": batch.cand_item,
        "cand_feat": batch.cand_feat,
        "cand_score": batch.cand_score,
        "cand_mask": batch.cand_mask,
        "ie_item": batch.ie_item,
        "ie_feat": batch.ie_feat,
        "ie_act": batch.ie_act,
        "ie_mask": batch.ie_mask,
        "ipv_item": batch.ipv_item,
        "ipv_feat": batch.ipv_feat,
        "ipv_act": batch.ipv_act,
        "ipv_mask": batch.ipv_mask,
    }
    tensors = {}
    for k, v in out.items():
        if v.dtype == np.bool_:
            tensors[k] = torch.from_numpy(np.ascontiguousarray(v))
        elif np.issubdtype(v.dtype, np.integer):
            tensors[k] = torch.from_numpy(v.astype(np.int64))
        else:
            tensors[k] = torch.from_numpy(v.astype(np.float32))
    if torch.device(device).type != "cpu":
        tensors = {k: t.to(device, non_blocking=True) for k, t in tensors.items()}
    return tensors


def task_targets(
    batch: RerankBatch, tasks: tuple[str, ...], schema: Schema
) -> tuple[np.ndarray, np.ndarray]:
    """Targets and masks of every task.

    Returns
    -------
    target : np.ndarray
        (B, K, T) float32 in {0, 1}.
    mask : np.ndarray
        (B, K, T) bool: the candidate's label was observed (for ``has_next``: it was exposed).
    """
    obs = batch.label_mask  # (B, K)
    cols, masks = [], []
    for t in tasks:
        if t == HAS_NEXT:
            # a later candidate (higher cloud position) of this request was exposed
            later = np.flip(np.logical_or.accumulate(np.flip(obs, 1), axis=1), 1)  # (B, K)
            later = np.concatenate([later[:, 1:], np.zeros_like(later[:, :1])], axis=1)
            cols.append(later & obs)
        else:
            if t not in schema.label_names:
                raise ValueError(f"task {t!r} is not a label of this dataset: {schema.label_names}")
            cols.append(batch.label[..., schema.label_names.index(t)] > 0)
        masks.append(obs)
    return np.stack(cols, -1).astype(np.float32), np.stack(masks, -1)


def labelled_index(label_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the labelled candidates of each request, left-aligned.

    label_mask (B, K) bool → select (B, J) int64 (padded with 0) and its mask (B, J) bool, with
    ``J`` the most labelled candidates of any request (at least 1).
    """
    count = label_mask.sum(1)  # (B,)
    J = max(int(count.max()) if count.size else 0, 1)
    order = np.argsort(~label_mask, axis=1, kind="stable")[:, :J]  # labelled first, in order
    mask = np.arange(J)[None, :] < count[:, None]
    return np.where(mask, order, 0).astype(np.int64), mask


def score_stats(batch: RerankBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (S,) of the cloud scores over the real candidates of a batch."""
    s = batch.cand_score[batch.cand_mask].astype(np.float64)  # (N, S)
    if s.size == 0:
        n = batch.cand_score.shape[-1]
        return torch.zeros(n), torch.ones(n)
    return torch.tensor(s.mean(0), dtype=torch.float32), torch.tensor(s.std(0), dtype=torch.float32)
