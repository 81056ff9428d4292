"""Building blocks of the device networks: item encoder, list context, behaviour encoders,
behaviour attention, scoring MLP.

Conventions: ``B`` requests, ``K`` candidates, ``T`` behaviour slots; sequences are
left-aligned (slot 0 oldest, padding after the last real entry) with boolean masks True on real
entries. Because padding comes after the real entries, a GRU run over the padded tensor gives
exact outputs on the real slots, and the final state is read at slot ``len - 1``.
"""

from __future__ import annotations

import torch
from torch import nn

NEG_INF = -1e9


def last_state(out: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Output at slot ``length - 1`` of every row (zeros where ``length == 0``).

    out (B, T, H), length (B,) int64 → (B, H)
    """
    idx = (length - 1).clamp(min=0)[:, None, None].expand(-1, 1, out.shape[-1])  # (B, 1, H)
    last = out.gather(1, idx).squeeze(1)  # (B, H)
    return last * (length > 0)[:, None].to(out.dtype)


def field_unit(
    x: torch.Tensor, chunks: tuple[int, ...], keep: tuple[int, ...] | None = None
) -> torch.Tensor:
    """Each field's slice of a cloud embedding scaled to unit length (zeros stay zero).

    x (..., D) with ``D = sum(chunks)`` → (..., D'), the slices ``keep`` (indices into
    ``chunks``; all by default) in order, ``D'`` their total size. The dot product of two such
    vectors, restricted to one slice, is the cosine similarity of that field's embeddings.
    """
    parts = torch.split(x, list(chunks), dim=-1)
    parts = tuple(parts[i] for i in keep) if keep is not None else parts
    return torch.cat([p / p.norm(dim=-1, keepdim=True).clamp(min=1e-6) for p in parts], -1)


def kept_sizes(fields: tuple[int, ...], keep: tuple[int, ...] | None) -> tuple[int, ...]:
    """Sizes of the matched field slices: ``fields[i]`` for ``i`` in ``keep`` (all if None)."""
    return tuple(fields) if keep is None else tuple(fields[i] for i in keep)


class FieldScale(nn.Module):
    """One learned weight per field slice: x (..., D) → x ⊙ [w_1]*d_1 ⊕ ... ⊕ [w_F]*d_F.

    Applied to the candidates' :func:`field_unit` embeddings, a dot product with a behaviour's
    unit embedding is ``Σ_f w_f cos_f``. Weights start at 1. A module of its own (one input) so
    that on-device DP-SGD has an exact per-sample gradient for it (``client/dp_gru.py``).
    """

    def __init__(self, fields: tuple[int, ...]):
        super().__init__()
        self.fields = tuple(int(f) for f in fields)
        self.weight = nn.Parameter(torch.ones(len(self.fields)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.repeat_interleave(self.weight, torch.tensor(self.fields))

    def match(self, q_unit: torch.Tensor | None, k_unit: torch.Tensor | None) -> torch.Tensor:
        """q_unit (B, K, D'), k_unit (B, T, D') :func:`field_unit` embeddings → (B, K, T)
        field match ``Σ_f w_f cos(q_f, k_f)``."""
        if q_unit is None or k_unit is None:
            raise ValueError("field match needs candidate and behaviour unit embeddings")
        return self(q_unit) @ k_unit.transpose(1, 2)


def mlp(sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear-ReLU stack ``sizes[0] → ... → sizes[-1]`` (ReLU after every layer)."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class CandidateEncoder(nn.Module):
    """Pointwise candidate encoding from the shipped embedding and the cloud scores.

    Cloud scores are standardized with statistics fitted on training data
    (:meth:`set_score_stats`); they are buffers, so they ship with the device network.
    """

    def __init__(self, emb_dim: int, n_scores: int, hidden: int):
        super().__init__()
        self.register_buffer("score_mean", torch.zeros(n_scores))
        self.register_buffer("score_std", torch.ones(n_scores))
        self.proj = nn.Linear(emb_dim + n_scores, hidden)

    def set_score_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.score_mean.copy_(mean)
        self.score_std.copy_(std.clamp(min=1e-6))

    def forward(self, emb: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """emb (B, K, D), score (B, K, S) → (B, K, H)."""
        z = (score - self.score_mean) / self.score_std  # (B, K, S)
        return torch.relu(self.proj(torch.cat([emb, z], dim=-1)))


class ListContext(nn.Module):
    """DLCM list encoder: a GRU over the candidates in reverse cloud order.

    Returns per-candidate encodings (in the original order) and the final state, the local
    ranking context ``s`` (dominated by the top of the cloud's list, which the GRU reads last).
    """

    def __init__(self, d_in: int, hidden: int, layers: int):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, layers, batch_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, K, D), mask (B, K) → out (B, K, H), s (B, H)."""
        length = mask.sum(1)  # (B,)
        j = torch.arange(x.shape[1], device=x.device)[None, :]  # (1, K)
        # reverse the real prefix of each row; j -> L-1-j is its own inverse there
        rev = torch.where(j < length[:, None], length[:, None] - 1 - j, j)  # (B, K)
        idx = rev[..., None].expand(-1, -1, x.shape[-1])
        out_r, _ = self.gru(x.gather(1, idx))  # (B, K, H), reversed order
        s = last_state(out_r, length)  # (B, H)
        out = out_r.gather(1, rev[..., None].expand(-1, -1, out_r.shape[-1]))  # (B, K, H)
        return out * mask[..., None].to(out.dtype), s


class ActionEmbedding(nn.Module):
    """Concatenated embeddings of bucketized action features (device-side, small vocabularies)."""

    def __init__(self, vocab: tuple[int, ...], dim: int):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(int(v), dim, padding_idx=0) for v in vocab)
        self.out_dim = dim * len(vocab)

    def forward(self, act: torch.Tensor) -> torch.Tensor:
        """act (..., A) int64 → (..., A * dim)."""
        return torch.cat([t(act[..., i]) for i, t in enumerate(self.tables)], dim=-1)


class HUBSMEncoder(nn.Module):
    """Heterogeneous user behaviour sequence model (EdgeRec eq. 3-5): one GRU over the items,
    one over the actions; the encoding of slot j is ``[p̂_j, â_j]``.

    The time-since-behaviour column (the last action column) is **not** fed to the GRUs: it
    changes with every request, and keeping it out is what makes the encoding incremental
    (one GRU step per new behaviour, :meth:`step`). It enters the attention instead
    (:class:`BehaviourBranch`). This is a Shoal choice; the paper lists time decay among the
    action features without saying where it enters.
    """

    def __init__(
        self,
        emb_dim: int,
        action_vocab: tuple[int, ...],
        cfg_hidden: int,
        layers: int,
        action_dim: int,
        fields: tuple[int, ...] = (),
        keep: tuple[int, ...] | None = None,
    ):
        super().__init__()
        self.actions = ActionEmbedding(action_vocab, action_dim)
        self.item_gru = nn.GRU(emb_dim, cfg_hidden, layers, batch_first=True)
        self.action_gru = nn.GRU(self.actions.out_dim, cfg_hidden, layers, batch_first=True)
        self.hidden, self.layers = cfg_hidden, layers
        self.fields, self.keep = tuple(fields), keep
        self.out_dim = 2 * cfg_hidden + sum(kept_sizes(self.fields, keep))

    def forward(self, emb: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """emb (B, T, D), act (B, T, A) without the time column → enc (B, T, 2H [+ D']).

        With ``fields`` the slot also keeps the item's per-field unit embedding of the matched
        fields ``keep`` (:func:`field_unit`, size D') for the attention's field match.
        """
        p_hat, _ = self.item_gru(emb)  # (B, T, H)
        a_hat, _ = self.action_gru(self.actions(act))  # (B, T, H)
        unit = [field_unit(emb, self.fields, self.keep)] if self.fields else []
        parts = [p_hat, a_hat] + unit
        return torch.cat(parts, dim=-1)

    def initial_state(self, batch: int = 1) -> torch.Tensor:
        """(2, layers, B, H) zeros: item-GRU and action-GRU states before any behaviour."""
        return torch.zeros(2, self.layers, batch, self.hidden)

    def step(
        self, emb: torch.Tensor, act: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance by one behaviour.

        emb (B, D), act (B, A), state (2, layers, B, H) → enc (B, 2H [+ D']), new state.
        """
        p_hat, h_item = self.item_gru(emb[:, None, :], state[0].contiguous())  # (B, 1, H)
        a_hat, h_act = self.action_gru(self.actions(act)[:, None, :], state[1].contiguous())
        unit = [field_unit(emb, self.fields, self.keep)] if self.fields else []
        parts = [p_hat[:, 0], a_hat[:, 0]] + unit
        return torch.cat(parts, dim=-1), torch.stack([h_item, h_act])


class HUISMEncoder(nn.Module):
    """DIN's item embedding for the device: a linear projection of each behaviour item's
    shipped embedding, no actions, no time. The candidates go through the same projection
    (:class:`DINAttention` compares them in one space, as DIN's shared embedding table does).
    """

    def __init__(
        self,
        emb_dim: int,
        hidden: int,
        fields: tuple[int, ...] = (),
        keep: tuple[int, ...] | None = None,
    ):
        super().__init__()
        self.proj = nn.Linear(emb_dim, hidden)
        self.hidden = hidden
        self.fields, self.keep = tuple(fields), keep
        self.out_dim = hidden + sum(kept_sizes(self.fields, keep))

    def forward(self, emb: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """emb (B, T, D) → enc (B, T, H [+ D']); ``act`` is ignored."""
        enc = self.proj(emb)
        if not self.fields:
            return enc
        return torch.cat([enc, field_unit(emb, self.fields, self.keep)], -1)


class DINAttention(nn.Module):
    """DIN's local activation unit (Zhou et al., KDD 2018), the attention of CRBAN+HUISM.

    ``w_tj = v^T relu(W [q_t, k_j, q_t - k_j, q_t ⊙ k_j] + b)`` and ``c_t = Σ_j w_tj k_j``:
    the weights are **not** softmax-normalised, so the context keeps how much of the sequence
    resembles the candidate (DIN's "intensity of user interests"). Queries and keys live in
    one space (the same projection of the shipped embeddings). The concatenation's linear
    layer is computed in its exact equivalent form ``A q + C k + P (q ⊙ k) + b`` (the
    ``q - k`` block folds into ``A`` and ``C``), which never materialises the (B, K, T, 4H)
    input. With ``fields`` the weight gains the same cosine field match
    ``Σ_f w_f cos(x_t^f, y_j^f)`` as :class:`BehaviourAttention`.
    """

    def __init__(self, dim: int, units: int, fields: tuple[int, ...] = ()):
        super().__init__()
        self.w_q = nn.Linear(dim, units)
        self.w_k = nn.Linear(dim, units, bias=False)
        self.w_p = nn.Linear(dim, units, bias=False)
        self.v = nn.Linear(units, 1, bias=False)
        self.fields = tuple(fields)
        self.field_scale = FieldScale(self.fields) if self.fields else None

    def weights(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        mask: torch.Tensor,
        q_unit: torch.Tensor | None = None,
        k_unit: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """q (B, K, H), k (B, T, H), mask (B, T) → activation weights (B, K, T), 0 on padding."""
        h = self.w_q(q)[:, :, None] + self.w_k(k)[:, None] + self.w_p(q[:, :, None] * k[:, None])
        w = self.v(torch.relu(h)).squeeze(-1)  # (B, K, T)
        if self.field_scale is not None:
            w = w + self.field_scale.match(q_unit, k_unit)  # Σ_f w_f cos
        return w * mask[:, None, :].to(w.dtype)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        mask: torch.Tensor,
        q_unit: torch.Tensor | None = None,
        k_unit: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """q (B, K, H), k (B, T, H), mask (B, T) → c (B, K, H) = Σ_j w_tj k_j."""
        return self.weights(q, k, mask, q_unit, k_unit) @ k


class BehaviourAttention(nn.Module):
    """Bahdanau attention (EdgeRec eq. 10-11).

    ``a_tj = softmax_j(e_tj)`` with ``e_tj = v^T tanh(W_q q_t + W_k k_j)``, and
    ``c_t = Σ_j a_tj v_j``. A request with an empty sequence gets a zero context.

    With ``match=True`` the score also has a bilinear term ``q_t^T M k_j``: an additive score
    ``v^T tanh(W_q q + W_k k)`` sums separate functions of query and key inside the tanh and
    represents "the candidate is like this behaviour" (an equality) only crudely; DIN adds the
    product ``q ⊙ k`` to its attention input for the same reason. A Shoal addition.

    With ``mass=True`` the output also carries ``log(1 + Σ_j exp(e_tj))`` (attention with a
    null slot): softmax normalisation hides *how much* of the sequence matches the candidate
    (one matching click or ten give the same context), and that amount is the signal (DIN drops
    the normalisation for the same reason). A Shoal addition; ``mass=False`` is the paper.

    With ``fields`` (the sizes of the matched per-field slices of the cloud embedding, in the
    order :func:`field_unit` returns them) the score also has a
    field match ``Σ_f w_f cos(x_t^f, y_j^f)`` between the candidate's and the behaviour's
    shipped embeddings of each field f (category, brand, ...), with one learned weight per
    field, initialised to one. Unlike the additive and bilinear terms, whose match signal is
    a product of small random projections at initialisation (a plateau that lasted hundreds
    of Adam steps on a task that *is* "the candidate's category was clicked in the last 5
    minutes", ``docs/models.md``), the cosine of two field embeddings is 1 for the same value
    from the first step. A Shoal addition; ``fields=()`` is the paper.
    """

    def __init__(
        self,
        q_dim: int,
        k_dim: int,
        units: int,
        mass: bool = False,
        match: bool = False,
        fields: tuple[int, ...] = (),
    ):
        super().__init__()
        self.w_q = nn.Linear(q_dim, units, bias=False)
        self.w_k = nn.Linear(k_dim, units)
        self.v = nn.Linear(units, 1, bias=False)
        self.mass = mass
        self.match = nn.Linear(q_dim, k_dim, bias=False) if match else None
        self.fields = tuple(fields)
        # one weight per field of the cosine field match (1 at init: attend to similar items)
        self.field_scale = FieldScale(self.fields) if self.fields else None

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor,
        q_unit: torch.Tensor | None = None,
        k_unit: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """q (B, K, Dq), k (B, T, Dk), v (B, T, Dv), mask (B, T) → (B, K, Dv [+ 1]).

        With ``fields``: ``q_unit`` (B, K, D) and ``k_unit`` (B, T, D) are the per-field unit
        embeddings (:func:`field_unit`) of the candidates and the behaviours, and the score
        gains ``Σ_f w_f cos(q_f, k_f)``.
        """
        e = self.v(torch.tanh(self.w_q(q)[:, :, None] + self.w_k(k)[:, None])).squeeze(-1)
        if self.match is not None:
            e = e + self.match(q) @ k.transpose(1, 2)  # (B, K, T) bilinear q^T M k
        if self.field_scale is not None:
            e = e + self.field_scale.match(q_unit, k_unit)  # (B, K, T) Σ_f w_f cos
        e = e.masked_fill(~mask[:, None, :], NEG_INF)  # (B, K, T)
        a = torch.softmax(e, dim=-1) * mask[:, None, :].to(e.dtype)  # empty row -> all zero
        ctx = a @ v  # (B, K, Dv)
        if not self.mass:
            return ctx
        null = torch.zeros_like(e[..., :1])  # (B, K, 1)
        return torch.cat([ctx, torch.logsumexp(torch.cat([e, null], -1), -1, keepdim=True)], -1)


class BehaviourBranch(nn.Module):
    """One behaviour sequence (IE or IPV): encoder + time-since embedding + attention.

    ``kind="hubsm"``: Bahdanau attention (:class:`BehaviourAttention`) with the query
    ``q_t``, keys ``[p̂_j, τ_j]``, values ``[â_j, p̂_j, τ_j]`` (τ = time-since embedding).
    ``kind="huism"``: DIN (:class:`DINAttention`) between the candidate's and the behaviours'
    projected item embeddings, keys = values (no actions, no time, no attention mass: DIN's
    unnormalised sum already keeps the amount).
    """

    def __init__(
        self,
        kind: str,
        emb_dim: int,
        action_vocab: tuple[int, ...],
        q_dim: int,
        hidden: int,
        layers: int,
        action_dim: int,
        time_dim: int,
        attention: int,
        mass: bool = False,
        match: bool = False,
        fields: tuple[int, ...] = (),
        keep: tuple[int, ...] | None = None,
    ):
        super().__init__()
        if kind not in ("hubsm", "huism"):
            raise ValueError(f"behaviour encoder must be 'hubsm' or 'huism', got {kind!r}")
        if fields and sum(fields) != emb_dim:
            raise ValueError(f"field sizes {fields} must add up to the embedding size {emb_dim}")
        if fields and keep is not None and (not keep or not set(keep) <= set(range(len(fields)))):
            raise ValueError(f"matched fields {keep} must be indices into {len(fields)} fields")
        self.kind = kind
        self.fields = tuple(fields)
        # sizes of the matched slices, in order: what each slot's unit embedding holds
        self.matched = kept_sizes(self.fields, keep) if self.fields else ()
        if kind == "hubsm":
            self.encoder: nn.Module = HUBSMEncoder(
                emb_dim, action_vocab[:-1], hidden, layers, action_dim, self.fields, keep
            )
            self.time = nn.Embedding(int(action_vocab[-1]), time_dim, padding_idx=0)
            k_dim, self.out_dim = hidden + time_dim, 2 * hidden + time_dim
            self.attention: nn.Module = BehaviourAttention(
                q_dim, k_dim, attention, mass, match, self.matched
            )
            self.out_dim += int(mass)
        else:
            self.encoder = HUISMEncoder(emb_dim, hidden, self.fields, keep)
            self.attention = DINAttention(hidden, attention, self.matched)
            self.out_dim = hidden

    def encode(self, emb: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """emb (B, T, D), act (B, T, A + 1) → enc (B, T, E): what the device stores per slot."""
        return self.encoder(emb, act[..., :-1])

    def attend(
        self,
        query: torch.Tensor,
        enc: torch.Tensor,
        since: torch.Tensor,
        mask: torch.Tensor,
        cand_emb: torch.Tensor | None = None,
        cand_unit: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query (B, K, Dq), enc (B, T, E), since (B, T) time bucket, mask (B, T) → (B, K, out).

        ``cand_emb`` (B, K, D): the candidates' shipped embeddings, needed by HUISM (DIN's
        query). ``cand_unit`` (B, K, D'): their :func:`field_unit` embeddings of the matched
        fields, needed with ``fields`` (computed once per request by the network, shared by
        its branches).
        """
        q_unit = k_unit = None
        if self.fields:
            if cand_unit is None:
                raise ValueError("a branch with field match needs the candidates' embeddings")
            D = sum(self.matched)
            enc, k_unit = enc[..., :-D], enc[..., -D:]  # (B, T, E - D'), (B, T, D')
            q_unit = cand_unit
        if self.kind == "huism":
            if cand_emb is None:
                raise ValueError("a HUISM branch needs the candidates' shipped embeddings")
            q = self.encoder.proj(cand_emb)  # (B, K, H): the keys' projection
            return self.attention(q, enc, mask, q_unit, k_unit)
        h = self.encoder.hidden
        p_hat, a_hat = enc[..., :h], enc[..., h:]
        tau = self.time(since)  # (B, T, time_dim)
        keys = torch.cat([p_hat, tau], dim=-1)
        values = torch.cat([a_hat, p_hat, tau], dim=-1)
        return self.attention(query, keys, values, mask, q_unit, k_unit)
