"""What every device network shares: its inputs, its outputs, and its size."""

from __future__ import annotations

import torch
from torch import nn

INPUT_NAMES = (
    "cand_emb",  # (B, K, D) float: cloud-shipped embeddings of the candidates
    "cand_score",  # (B, K, S) float: cloud scores of the candidates
    "cand_mask",  # (B, K) bool
    "ie_emb",  # (B, m, D) float: embeddings of the exposed items, oldest first
    "ie_act",  # (B, m, A_ie + 1) int64: bucketized exposure actions, last column time-since
    "ie_mask",  # (B, m) bool
    "ipv_emb",  # (B, n, D) float: embeddings of the page-viewed (clicked) items
    "ipv_act",  # (B, n, A_ipv + 1) int64
    "ipv_mask",  # (B, n) bool
)
"""Positional inputs of every device network's ``forward`` (and of its ONNX graph)."""


def take(x: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
    """Rows of candidates: x (B, K, D), select (B, J) int64 → (B, J, D)."""
    return x.gather(1, select[..., None].expand(-1, -1, x.shape[-1]))


class DeviceNetwork(nn.Module):
    """Base of the networks that run on the device, after the cloud's embedding lookups.

    Subclasses set ``tasks`` (output heads, ``tasks[0] == "click"``) and implement
    ``forward(*inputs, select=None) -> logits (B, K, len(tasks))`` over :data:`INPUT_NAMES`;
    ``select`` (B, J) restricts the scored candidates (training skips unlabelled ones).
    """

    tasks: tuple[str, ...] = ("click",)

    def encode_candidates(
        self,
        cand_emb: torch.Tensor,
        cand_score: torch.Tensor,
        cand_mask: torch.Tensor,
        select: torch.Tensor | None,
        query_from_list: bool = True,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Candidate encoder + list context, shared by the device networks.

        Returns the head's candidate parts ``[e_t, p̂_t, s]`` (``[e_t]`` without list context),
        each (B, K, .), and the attention query (``p̂_t``, or ``e_t`` when there is no list
        context or ``query_from_list`` is False); with ``select`` (B, J) only those rows.
        Subclasses set ``self.candidate`` and ``self.list_context`` (None = off).
        """
        e = self.candidate(cand_emb, cand_score)  # (B, K, H)
        parts, query = [e], e
        if self.list_context is not None:
            p_hat, s = self.list_context(e, cand_mask)  # (B, K, H), (B, H)
            parts += [p_hat, s[:, None, :].expand_as(p_hat)]
            query = p_hat if query_from_list else e
        if select is not None:
            parts = [take(x, select) for x in parts]  # (B, J, .)
            query = take(query, select)
        return parts, query

    def order_scores(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Scores whose descending order is the displayed order: (B, K, T) → (B, K).

        Pointwise models rank by the click logit; list-generating models override this.
        """
        return logits[..., 0]

    def set_score_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardization of the cloud scores (fitted on training data, shipped as buffers)."""
        self.candidate.set_score_stats(mean, std)

    def size_bytes(self) -> int:
        """Bytes of all parameters and buffers (what ships to the device, float32)."""
        tensors = [*self.parameters(), *self.buffers()]
        return int(sum(t.numel() * t.element_size() for t in tensors))
