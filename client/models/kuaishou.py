"""Kuaishou-style multi-task reranker (CIKM 2022, arXiv 2208.09577; ``docs/models.md``).

Each candidate attends to the user's behaviour sequence *with its feedback* (every IE and IPV
event is one token: item embedding + action embeddings, time-since included) by multi-head
target attention; an MMoE head predicts several tasks: click, has-next (the user goes on past
the item, derived from exposures), and whichever of long view / like / favourite the dataset
labels. The displayed order is chosen slot by slot by a truncated beam search over

    ListReward = Σ_i s_i · (α · p_ev,i + β · p_like,i),   s_i = Π_{j placed before i} p_next,j

with ``p_ev`` the long-view probability (click where the data has no long view) and ``p_like``
the like probability (favourite on the simulator; β = 0 without either).

Shoal note: the per-item probabilities do not depend on the items placed before, so for this
objective sorting by ``r_i / (1 - p_next,i)`` (``r = α p_ev + β p_like``) is already optimal (an
exchange argument: ``i`` before ``j`` iff ``r_i (1 - p_j) > r_j (1 - p_i)``); the beam search
is kept because it stays correct for prefix-dependent scorers, and a test checks it finds the
optimum. The items after the beam's ``depth`` slots follow in that ratio order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from shoal.client.models.base import DeviceNetwork
from shoal.client.models.parts import NEG_INF, ActionEmbedding, CandidateEncoder, ListContext, mlp
from shoal.client.models.reranker import HAS_NEXT

PAD_PENALTY = 1e6
"""Beam-search key penalty of choosing a padding slot (only chosen once a list is exhausted)."""


@dataclass
class KuaishouConfig:
    """Shape of the Kuaishou-style device network."""

    emb_dim: int
    n_scores: int
    ie_action_vocab: tuple[int, ...]
    ipv_action_vocab: tuple[int, ...]
    tasks: tuple[str, ...] = ("click", HAS_NEXT)
    """Output heads; ``tasks[0]`` must be click."""
    ev_task: str = "click"
    """Task whose probability is the effective view in ListReward."""
    like_task: str | None = None
    """Task whose probability is the like in ListReward (None: β term off)."""
    hidden: int = 32
    heads: int = 4
    experts: int = 4
    mlp: tuple[int, ...] = (32,)
    """Hidden sizes of each expert."""
    list_context: bool = True
    gru_layers: int = 3
    action_dim: int = 4
    time_dim: int = 8
    dropout: float = 0.0
    beam: int = 4
    beam_depth: int = 10
    alpha: float = 1.0
    beta: float = 0.5

    def __post_init__(self) -> None:
        if not self.tasks or self.tasks[0] != "click" or HAS_NEXT not in self.tasks:
            raise ValueError(f"tasks must start with 'click' and include has_next: {self.tasks}")
        for t in (self.ev_task, self.like_task):
            if t is not None and t not in self.tasks:
                raise ValueError(f"reward task {t!r} is not among the tasks {self.tasks}")
        if self.hidden % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide hidden ({self.hidden})")

    @classmethod
    def from_model_config(
        cls, mcfg, *, emb_dim, n_scores, ie_action_vocab, ipv_action_vocab, label_names
    ) -> KuaishouConfig:
        """Tasks = click, has_next, then ``mcfg.tasks`` that the dataset labels."""
        extra = [t for t in mcfg.tasks if t in label_names and t not in ("click", HAS_NEXT)]
        tasks = ("click", HAS_NEXT, *extra)
        ev = "long_view" if "long_view" in tasks else "click"
        like = next((t for t in ("like", "favorite") if t in tasks), None)
        return cls(
            emb_dim=emb_dim,
            n_scores=n_scores,
            ie_action_vocab=tuple(ie_action_vocab),
            ipv_action_vocab=tuple(ipv_action_vocab),
            tasks=tasks,
            ev_task=ev,
            like_task=like,
            hidden=mcfg.hidden,
            heads=mcfg.heads,
            experts=mcfg.experts,
            mlp=tuple(mcfg.mlp),
            gru_layers=mcfg.gru_layers,
            action_dim=mcfg.action_dim,
            time_dim=mcfg.time_dim,
            dropout=mcfg.dropout,
            beam=mcfg.beam,
            beam_depth=mcfg.beam_depth,
            alpha=mcfg.reward_alpha,
            beta=mcfg.reward_beta,
        )


class TargetAttention(nn.Module):
    """Multi-head attention from each candidate (query) to the behaviour tokens."""

    def __init__(self, q_dim: int, kv_dim: int, hidden: int, heads: int):
        super().__init__()
        self.heads, self.d = heads, hidden // heads
        self.q = nn.Linear(q_dim, hidden, bias=False)
        self.k = nn.Linear(kv_dim, hidden, bias=False)
        self.v = nn.Linear(kv_dim, hidden, bias=False)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """q (B, K, Dq), kv (B, T, Dkv), mask (B, T) → (B, K, H); empty sequence → bias only."""
        B, K, T = q.shape[0], q.shape[1], kv.shape[1]
        qh = self.q(q).view(B, K, self.heads, self.d).transpose(1, 2)  # (B, h, K, d)
        kh = self.k(kv).view(B, T, self.heads, self.d).transpose(1, 2)  # (B, h, T, d)
        vh = self.v(kv).view(B, T, self.heads, self.d).transpose(1, 2)  # (B, h, T, d)
        e = qh @ kh.transpose(-1, -2) / math.sqrt(self.d)  # (B, h, K, T)
        m = mask[:, None, None, :]
        a = torch.softmax(e.masked_fill(~m, NEG_INF), dim=-1) * m.to(e.dtype)
        ctx = (a @ vh).transpose(1, 2).reshape(B, K, self.heads * self.d)  # (B, K, H)
        return self.out(ctx)


class MMoE(nn.Module):
    """Multi-gate mixture of experts: shared experts, one softmax gate and tower per task."""

    def __init__(self, d_in: int, sizes: tuple[int, ...], experts: int, tasks: int, dropout: float):
        super().__init__()
        self.experts = nn.ModuleList(mlp([d_in, *sizes], dropout) for _ in range(experts))
        self.gates = nn.ModuleList(nn.Linear(d_in, experts) for _ in range(tasks))
        d = ([d_in, *sizes])[-1]
        self.towers = nn.ModuleList(
            nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, 1)) for _ in range(tasks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, K, D) → logits (B, K, T)."""
        ex = torch.stack([e(x) for e in self.experts], dim=-2)  # (B, K, E, De)
        outs = []
        for gate, tower in zip(self.gates, self.towers):
            g = torch.softmax(gate(x), dim=-1)[..., None]  # (B, K, E, 1)
            outs.append(tower((g * ex).sum(-2)))  # (B, K, 1)
        return torch.cat(outs, dim=-1)


class KuaishouNet(DeviceNetwork):
    """Candidate encoder, optional list context, target attention over feedback tokens, MMoE."""

    def __init__(self, cfg: KuaishouConfig):
        super().__init__()
        self.cfg = cfg
        self.tasks = tuple(cfg.tasks)
        H = cfg.hidden
        self.candidate = CandidateEncoder(cfg.emb_dim, cfg.n_scores, H)
        self.list_context = ListContext(H, H, cfg.gru_layers) if cfg.list_context else None
        self.ie_actions = ActionEmbedding(cfg.ie_action_vocab, cfg.action_dim)
        self.ipv_actions = ActionEmbedding(cfg.ipv_action_vocab, cfg.action_dim)
        self.ie_token = nn.Linear(cfg.emb_dim + self.ie_actions.out_dim, H)
        self.ipv_token = nn.Linear(cfg.emb_dim + self.ipv_actions.out_dim, H)
        self.attention = TargetAttention(H, H, H, cfg.heads)
        d = H * (4 if self.list_context is not None else 2)
        self.head = MMoE(d, cfg.mlp, cfg.experts, len(self.tasks), cfg.dropout)

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
        """Inputs as ``base.INPUT_NAMES`` → logits (B, K, T); with ``select`` (B, J) only those
        candidates are scored → (B, J, T)."""
        parts, query = self.encode_candidates(cand_emb, cand_score, cand_mask, select)
        tok_ie = torch.relu(self.ie_token(torch.cat([ie_emb, self.ie_actions(ie_act)], -1)))
        tok_ipv = torch.relu(self.ipv_token(torch.cat([ipv_emb, self.ipv_actions(ipv_act)], -1)))
        tokens = torch.cat([tok_ie, tok_ipv], dim=1)  # (B, m + n, H)
        mask = torch.cat([ie_mask, ipv_mask], dim=1)  # (B, m + n)
        parts.append(self.attention(query, tokens, mask))  # (B, K, H)
        return self.head(torch.cat(parts, dim=-1))  # (B, K, T)

    def order_scores(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Scores of the beam-searched order: (B, K, T) → (B, K), higher = shown earlier."""
        cfg = self.cfg
        p = torch.sigmoid(logits.double())
        p_next = p[..., self.tasks.index(HAS_NEXT)]
        reward = cfg.alpha * p[..., self.tasks.index(cfg.ev_task)]
        if cfg.like_task is not None:
            reward = reward + cfg.beta * p[..., self.tasks.index(cfg.like_task)]
        out = beam_order_scores(p_next.cpu(), reward.cpu(), mask.cpu(), cfg.beam, cfg.beam_depth)
        return out.to(device=logits.device, dtype=logits.dtype)


def list_reward(order: torch.Tensor, p_next: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    """ListReward of orders: order (B, L) item indices, p_next/reward (B, K) → (B,)."""
    pn = p_next.gather(1, order)  # (B, L)
    r = reward.gather(1, order)
    surv = torch.cumprod(torch.cat([torch.ones_like(pn[:, :1]), pn[:, :-1]], 1), dim=1)
    return (surv * r).sum(1)


def beam_order_scores(
    p_next: torch.Tensor, reward: torch.Tensor, mask: torch.Tensor, beam: int, depth: int
) -> torch.Tensor:
    """Order candidates by a truncated beam search over ListReward.

    Parameters
    ----------
    p_next, reward : torch.Tensor
        (B, K) has-next probability and per-item reward ``α p_ev + β p_like``.
    mask : torch.Tensor
        (B, K) bool, real candidates.
    beam, depth : int
        Beam width; number of slots searched (the rest follow by ``reward / (1 - p_next)``).

    Returns
    -------
    torch.Tensor
        (B, K) scores: descending order = the chosen order; padding gets -1.
    """
    B, K = reward.shape
    depth = min(depth, K)
    pn, r = p_next.double(), reward.double()
    pad = ~mask
    placed = pad[:, None, :].clone()  # (B, W, K), padding counts as placed
    surv = torch.ones(B, 1, dtype=torch.float64)
    total = torch.zeros(B, 1, dtype=torch.float64)
    seq = torch.zeros(B, 1, 0, dtype=torch.long)
    for _ in range(depth):
        W = placed.shape[1]
        # a placed (or padding) slot adds nothing, whatever reward padding carries
        gain = total[..., None] + surv[..., None] * torch.where(placed, 0.0, r[:, None, :])
        # an exhausted beam may only pick padding: key = its total - penalty. A beam with real
        # candidates left that picks a placed slot leaves a hole: it is dead, and its total
        # keeps twice the penalty so that it never outranks a live beam (nor wins at the end)
        live = ~placed.all(-1)  # (B, W)
        cost = placed.to(torch.float64) * (1.0 + live[..., None].to(torch.float64))
        key = gain - PAD_PENALTY * cost  # (B, W, K)
        top = key.reshape(B, W * K).topk(min(beam, W * K), dim=1).indices  # (B, W')
        parent, item = top // K, top % K
        placed = placed.gather(1, parent[..., None].expand(-1, -1, K)).clone()
        is_real = ~placed.gather(2, item[..., None]).squeeze(-1)  # (B, W')
        hole = live.gather(1, parent) & ~is_real  # (B, W')
        placed.scatter_(2, item[..., None], True)
        surv_p, total_p = surv.gather(1, parent), total.gather(1, parent)
        total = total_p + torch.where(is_real, surv_p * r.gather(1, item), 0.0)
        total = total - 2 * PAD_PENALTY * hole.to(torch.float64)
        surv = torch.where(is_real, surv_p * pn.gather(1, item), surv_p)
        seq = torch.cat(
            [
                seq.gather(1, parent[..., None].expand(-1, -1, seq.shape[2])),
                torch.where(is_real, item, -1)[..., None],
            ],
            dim=2,
        )
    best = total.argmax(1)  # (B,)
    prefix = seq[torch.arange(B), best]  # (B, depth), -1 where a padding slot was taken
    ratio = r / (1.0 - pn).clamp(min=1e-9)
    scores = K * ratio / (1.0 + ratio)  # in [0, K): below every prefix slot
    rows = torch.arange(B)[:, None].expand_as(prefix)
    ok = prefix >= 0
    scores[rows[ok], prefix[ok]] = (2 * K - torch.arange(depth).expand_as(prefix))[ok].double()
    return torch.where(mask, scores, torch.full_like(scores, -1.0))
