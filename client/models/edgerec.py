"""The EdgeRec reranker family (Gong et al., CIKM 2020; ``docs/models.md``).

One network, configured by which parts it has, covers the six models of EdgeRec's Table 2:

==========================  ============  ========  ========
model                       list context  IE        IPV
==========================  ============  ========  ========
dnn-rank                    no            —         —
dlcm                        yes           —         —
crban-hubsm-ie              yes           HUBSM     —
crban-hubsm-ipv             yes           —         HUBSM
crban-huism                 yes           HUISM     HUISM
crban-hubsm (full EdgeRec)  yes           HUBSM     HUBSM
==========================  ============  ========  ========

Score of candidate ``t`` = MLP([e_t, p̂_t, s, c_t^IE, c_t^IPV]): the pointwise encoding, the
list-GRU encoding and the list context ``s`` (when the list context is on), and one behaviour
attention context per sequence: Bahdanau attention with the query ``p̂_t`` (``e_t`` without
list context) for HUBSM, DIN's activation unit over projected item embeddings for HUISM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from shoal.client.models.base import DeviceNetwork, take
from shoal.client.models.parts import (
    BehaviourBranch,
    CandidateEncoder,
    ListContext,
    field_unit,
    mlp,
)

SEQUENCE_KINDS = ("none", "hubsm", "huism")


@dataclass
class EdgeRecConfig:
    """Shape of an EdgeRec device network (paper settings as defaults)."""

    emb_dim: int
    """D: size of the cloud-shipped item embedding."""
    n_scores: int
    """S: cloud scores per candidate."""
    ie_action_vocab: tuple[int, ...]
    """Vocabulary of each IE action column, time-since last."""
    ipv_action_vocab: tuple[int, ...]
    list_context: bool = True
    ie: str = "hubsm"
    """IE sequence model: none, hubsm or huism."""
    ipv: str = "hubsm"
    hidden: int = 32
    gru_layers: int = 3
    attention: int = 32
    mlp: tuple[int, ...] = (32,)
    action_dim: int = 4
    time_dim: int = 8
    dropout: float = 0.0
    attention_mass: bool = True
    """Also feed the head the attention mass ``log(1 + Σ_j exp(e_tj))`` of each HUBSM sequence
    (``parts.BehaviourAttention``; False = the paper's softmax context alone)."""
    attention_match: bool = False
    """Add a bilinear match term ``q^T M k`` to the HUBSM branches' additive attention score
    (``parts.BehaviourAttention``; False = the paper's Bahdanau score)."""
    fields: tuple[int, ...] = ()
    """Sizes of the per-field slices of the shipped embedding (summing to ``emb_dim``) for the
    attention's cosine field match (``parts.BehaviourAttention``; empty = the paper's score)."""
    match: tuple[int, ...] | None = None
    """Indices into ``fields`` of the fields the field match compares (None = all)."""
    query: str = "list"
    """HUBSM attention query: ``list`` = the candidate's list-GRU encoding p̂_t (the paper),
    ``item`` = its pointwise encoding e_t. Without list context the query is always e_t."""

    def __post_init__(self) -> None:
        if self.query not in ("list", "item"):
            raise ValueError(f"query must be 'list' or 'item', got {self.query!r}")
        for k in ("ie", "ipv"):
            if getattr(self, k) not in SEQUENCE_KINDS:
                raise ValueError(f"{k} must be one of {SEQUENCE_KINDS}, got {getattr(self, k)!r}")
        if self.emb_dim < 1 or self.hidden < 1:
            raise ValueError("emb_dim and hidden must be >= 1")


class EdgeRecNet(DeviceNetwork):
    """EdgeRec device network: candidate encoder, list context, behaviour branches, head."""

    tasks = ("click",)

    def __init__(self, cfg: EdgeRecConfig):
        super().__init__()
        self.cfg = cfg
        H = cfg.hidden
        self.candidate = CandidateEncoder(cfg.emb_dim, cfg.n_scores, H)
        self.list_context = ListContext(H, H, cfg.gru_layers) if cfg.list_context else None
        q_dim = H
        # indices of the fields the field match compares (None = all), shared by the branches
        self.keep = tuple(cfg.match) if cfg.match is not None else None
        branch = dict(
            emb_dim=cfg.emb_dim,
            q_dim=q_dim,
            hidden=H,
            layers=cfg.gru_layers,
            action_dim=cfg.action_dim,
            time_dim=cfg.time_dim,
            attention=cfg.attention,
            mass=cfg.attention_mass,
            match=cfg.attention_match,
            fields=tuple(cfg.fields),
            keep=self.keep,
        )
        self.ie = (
            BehaviourBranch(cfg.ie, action_vocab=cfg.ie_action_vocab, **branch)
            if cfg.ie != "none"
            else None
        )
        self.ipv = (
            BehaviourBranch(cfg.ipv, action_vocab=cfg.ipv_action_vocab, **branch)
            if cfg.ipv != "none"
            else None
        )
        d_head = H + (2 * H if self.list_context is not None else 0)
        d_head += sum(b.out_dim for b in (self.ie, self.ipv) if b is not None)
        self.head = nn.Sequential(
            mlp([d_head, *cfg.mlp], cfg.dropout), nn.Linear(([d_head, *cfg.mlp])[-1], 1)
        )

    def encode(
        self,
        ie_emb: torch.Tensor,
        ie_act: torch.Tensor,
        ipv_emb: torch.Tensor,
        ipv_act: torch.Tensor,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Behaviour encodings (B, m, E_ie) and (B, n, E_ipv); None for an absent branch.

        This is the part the device computes incrementally (:meth:`HUBSMEncoder.step`).
        """
        ie = self.ie.encode(ie_emb, ie_act) if self.ie is not None else None
        ipv = self.ipv.encode(ipv_emb, ipv_act) if self.ipv is not None else None
        return ie, ipv

    def rerank(
        self,
        cand_emb: torch.Tensor,
        cand_score: torch.Tensor,
        cand_mask: torch.Tensor,
        ie_enc: torch.Tensor | None,
        ie_since: torch.Tensor,
        ie_mask: torch.Tensor,
        ipv_enc: torch.Tensor | None,
        ipv_since: torch.Tensor,
        ipv_mask: torch.Tensor,
        select: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Score candidates from stored behaviour encodings → logits (B, K, 1).

        ``*_since`` (B, T) are the time-since buckets at request time (last action column).
        ``select`` (B, J) int64, optional: score only these candidates (all of them still form
        the list context) → (B, J, 1); training uses it to skip unlabelled candidates.
        """
        parts, query = self.encode_candidates(
            cand_emb, cand_score, cand_mask, select, self.cfg.query == "list"
        )
        cand = unit = None
        if self.cfg.fields or "huism" in (self.cfg.ie, self.cfg.ipv):
            cand = take(cand_emb, select) if select is not None else cand_emb  # (B, K, D)
        if self.cfg.fields:  # the field match reads the candidates' shipped embeddings
            unit = field_unit(cand, self.cfg.fields, self.keep)  # once for both branches
        if self.ie is not None:
            parts.append(self.ie.attend(query, ie_enc, ie_since, ie_mask, cand, unit))
        if self.ipv is not None:
            parts.append(self.ipv.attend(query, ipv_enc, ipv_since, ipv_mask, cand, unit))
        return self.head(torch.cat(parts, dim=-1))  # (B, K, 1)

    def forward(
        self,
        cand_emb: torch.Tensor,
        cand_score: torch.Tensor,
        cand_mask: torch.Tensor,
        ie_emb: torch.Tensor,
        ie_act: torch.Tensor,
        ie_mask: torch.Tensor,
        ipv_emb: torch.Tensor,
        ipv_act: torch.Tensor,
        ipv_mask: torch.Tensor,
        select: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Full forward from raw sequences (see ``base.INPUT_NAMES``) → logits (B, K, 1)
        (``(B, J, 1)`` with ``select``, see :meth:`rerank`)."""
        ie_enc, ipv_enc = self.encode(ie_emb, ie_act, ipv_emb, ipv_act)
        return self.rerank(
            cand_emb,
            cand_score,
            cand_mask,
            ie_enc,
            ie_act[..., -1],
            ie_mask,
            ipv_enc,
            ipv_act[..., -1],
            ipv_mask,
            select,
        )
