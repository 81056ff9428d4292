"""Reranker parts (``shoal.client.models.parts``) against slow loop references: last state,
list context, behaviour attention, incremental HUBSM, and what HUBSM / HUISM read."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _model_helpers import SIM_SCHEMA, _acts, _default_inputs, _mask, _model

from shoal.client.models.parts import (
    BehaviourAttention,
    BehaviourBranch,
    DINAttention,
    HUBSMEncoder,
    ListContext,
    field_unit,
    last_state,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ================================================================== parts vs slow references
def test_last_state_matches_loop() -> None:
    g = torch.Generator().manual_seed(0)
    out = torch.randn(4, 5, 3, generator=g)
    length = torch.tensor([5, 1, 0, 3])
    got = last_state(out, length)
    for b in range(4):
        L = int(length[b])
        want = out[b, L - 1] if L > 0 else torch.zeros(3)
        assert torch.equal(got[b], want)


def test_list_context_matches_gru_over_reversed_prefix() -> None:
    torch.manual_seed(0)
    lc = ListContext(5, 6, 2)
    g = torch.Generator().manual_seed(1)
    lengths = [6, 3, 0, 1]
    mask = _mask(lengths, 6)
    x = torch.randn(4, 6, 5, generator=g)  # padded slots hold garbage on purpose
    with torch.no_grad():
        out, s = lc(x, mask)
        assert out.shape == (4, 6, 6) and s.shape == (4, 6)
        for b, L in enumerate(lengths):
            if L == 0:
                assert torch.equal(out[b], torch.zeros(6, 6))
                assert torch.equal(s[b], torch.zeros(6))
                continue
            ref, h = lc.gru(x[b, :L].flip(0)[None])  # last cloud position first
            ref = ref[0]  # (L, H), reversed order
            torch.testing.assert_close(out[b, :L], ref.flip(0), atol=1e-6, rtol=0)
            assert torch.equal(out[b, L:], torch.zeros(6 - L, 6))
            torch.testing.assert_close(s[b], ref[-1], atol=1e-6, rtol=0)
            torch.testing.assert_close(s[b], h[-1, 0], atol=1e-6, rtol=0)
            # the top of the cloud's list is read last: its output is the final state
            torch.testing.assert_close(out[b, 0], s[b], atol=1e-6, rtol=0)


def _attention_loops(att: BehaviourAttention, q, k, v, mask) -> torch.Tensor:
    Wq, Wk = att.w_q.weight.double(), att.w_k.weight.double()
    bk, vv = att.w_k.bias.double(), att.v.weight[0].double()
    B, K, T = q.shape[0], q.shape[1], k.shape[1]
    out = torch.zeros(B, K, v.shape[-1], dtype=torch.float64)
    for b in range(B):
        for t in range(K):
            e = [
                float(
                    vv.double()
                    @ torch.tanh(
                        Wq.double() @ q[b, t].double()
                        + Wk.double() @ k[b, j].double()
                        + bk.double()
                    )
                )
                for j in range(T)
                if mask[b, j]
            ]
            if not e:
                continue  # all masked: zero context
            w = np.exp(np.array(e) - max(e))
            w /= w.sum()
            real = [j for j in range(T) if mask[b, j]]
            for wj, j in zip(w, real):
                out[b, t] += float(wj) * v[b, j].double()
    return out


def test_behaviour_attention_matches_loops() -> None:
    torch.manual_seed(0)
    att = BehaviourAttention(q_dim=4, k_dim=3, units=5)
    g = torch.Generator().manual_seed(2)
    q = torch.randn(3, 2, 4, generator=g)
    k = torch.randn(3, 6, 3, generator=g)
    v = torch.randn(3, 6, 7, generator=g)
    mask = _mask([6, 2, 0], 6)
    with torch.no_grad():
        got = att(q, k, v, mask)
        want = _attention_loops(att, q, k, v, mask)
    assert got.shape == (3, 2, 7)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)
    assert torch.equal(got[2], torch.zeros(2, 7))  # empty sequence -> zero context


def test_behaviour_attention_mass_and_match_by_hand() -> None:
    """mass = log(1 + Σ_j exp e_tj) over real slots; match adds q^T M k to every score."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(2, 3, 4, generator=g), torch.randn(2, 5, 3, generator=g)
    v = torch.randn(2, 5, 6, generator=g)
    mask = _mask([5, 0], 5)
    plain = BehaviourAttention(4, 3, 5)
    both = BehaviourAttention(4, 3, 5, mass=True, match=True)
    both.load_state_dict({**plain.state_dict(), "match.weight": both.match.weight.detach()})
    with torch.no_grad():
        base = plain.v(torch.tanh(plain.w_q(q)[:, :, None] + plain.w_k(k)[:, None])).squeeze(-1)
        M = both.match.weight  # (k_dim, q_dim)
        e = base + torch.einsum("bkq,dq,btd->bkt", q, M, k)  # (B, K, T)
        out = both(q, k, v, mask)  # (B, K, 6 + 1)
        a = torch.softmax(e[0], -1)
        torch.testing.assert_close(out[0, :, :6], a @ v[0], atol=1e-6, rtol=0)
        mass = torch.log(1 + torch.exp(e[0]).sum(-1))
        torch.testing.assert_close(out[0, :, 6], mass, atol=1e-5, rtol=0)
        assert torch.equal(out[1], torch.zeros(3, 7))  # empty sequence: zero context, mass 0


def test_field_unit_normalises_each_field_slice() -> None:
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0, 2.0], [0.0, 0.0, 1.0, 1.0, -5.0]])
    got = field_unit(x, (2, 2, 1))
    r = 2**-0.5
    want = torch.tensor([[0.6, 0.8, 0.0, 0.0, 1.0], [0.0, 0.0, r, r, -1.0]])
    torch.testing.assert_close(got, want)  # a zero slice (padding) stays zero


def test_behaviour_attention_field_match_by_hand() -> None:
    """fields adds Σ_f w_f cos(x_t^f, y_j^f) to every score; w starts at one."""
    g = torch.Generator().manual_seed(7)
    q, k, v = torch.randn(2, 3, 4, generator=g), torch.randn(2, 5, 3, generator=g), None
    v = torch.randn(2, 5, 6, generator=g)
    x, y = torch.randn(2, 3, 5, generator=g), torch.randn(2, 5, 5, generator=g)  # D = 2 + 3
    mask = _mask([5, 2], 5)
    torch.manual_seed(0)
    plain = BehaviourAttention(4, 3, 5, mass=True)
    fm = BehaviourAttention(4, 3, 5, mass=True, fields=(2, 3))
    fm.load_state_dict({**plain.state_dict(), "field_scale.weight": torch.tensor([0.5, -2.0])})
    assert torch.equal(BehaviourAttention(4, 3, 5, fields=(2, 3)).field_scale.weight, torch.ones(2))
    with torch.no_grad():
        e = plain.v(torch.tanh(plain.w_q(q)[:, :, None] + plain.w_k(k)[:, None])).squeeze(-1)
        for b in range(2):
            for t in range(3):
                for j in range(5):
                    cos = [
                        torch.nn.functional.cosine_similarity(x[b, t, sl], y[b, j, sl], dim=0)
                        for sl in (slice(0, 2), slice(2, 5))
                    ]
                    e[b, t, j] += 0.5 * cos[0] - 2.0 * cos[1]
        out = fm(q, k, v, mask, field_unit(x, (2, 3)), field_unit(y, (2, 3)))
        for b, L in enumerate((5, 2)):
            a = torch.softmax(e[b, :, :L], -1)
            torch.testing.assert_close(out[b, :, :6], a @ v[b, :L], atol=1e-6, rtol=0)
            mass = torch.log(1 + torch.exp(e[b, :, :L]).sum(-1))
            torch.testing.assert_close(out[b, :, 6], mass, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unit embeddings"):
        fm(q, k, v, mask)


def test_din_attention_matches_concatenated_activation_unit() -> None:
    """DIN: w_tj = v^T relu(W [q, k, q - k, q ⊙ k] + b) (+ Σ_f w_f cos), c_t = Σ_j w_tj k_j,
    no softmax. The folded form must equal one Linear over the explicit concatenation."""
    g = torch.Generator().manual_seed(3)
    H, U, K, T = 4, 5, 3, 6
    q, k = torch.randn(2, K, H, generator=g), torch.randn(2, T, H, generator=g)
    x, y = torch.randn(2, K, 5, generator=g), torch.randn(2, T, 5, generator=g)  # D = 2 + 3
    mask = _mask([6, 2], T)
    torch.manual_seed(0)
    att = DINAttention(H, U, fields=(2, 3))
    att.field_scale.weight.data = torch.tensor([0.5, -2.0])
    # the concatenated layer W = [W1 W2 W3 W4] with W1 - (-W3) = A, W2 - W3 = C: pick W3 freely
    W3 = torch.randn(U, H, generator=g)
    W = torch.cat([att.w_q.weight - W3, att.w_k.weight + W3, W3, att.w_p.weight], 1)
    with torch.no_grad():
        out = att(q, k, mask, field_unit(x, (2, 3)), field_unit(y, (2, 3)))
        for b, L in enumerate((6, 2)):
            for t in range(K):
                want = torch.zeros(H)
                for j in range(L):
                    z = torch.cat([q[b, t], k[b, j], q[b, t] - k[b, j], q[b, t] * k[b, j]])
                    w = att.v.weight[0] @ torch.relu(W @ z + att.w_q.bias)
                    cos = [
                        torch.nn.functional.cosine_similarity(x[b, t, sl], y[b, j, sl], dim=0)
                        for sl in (slice(0, 2), slice(2, 5))
                    ]
                    want += (w + 0.5 * cos[0] - 2.0 * cos[1]) * k[b, j]
                torch.testing.assert_close(out[b, t], want, atol=1e-5, rtol=0)
    with torch.no_grad():  # not normalised: two copies of a slot give twice its context
        torch.manual_seed(1)
        a = DINAttention(H, U)
        kk = k[:1, :1].expand(1, 2, H)
        torch.testing.assert_close(
            a(q[:1], kk, _mask([2], 2)), 2 * a(q[:1], kk, _mask([1], 2)), atol=1e-6, rtol=0
        )
        assert torch.equal(a(q[:1], kk, _mask([0], 2)), torch.zeros(1, K, H))
    with pytest.raises(ValueError, match="unit embeddings"):
        att(q, k, mask)


def test_behaviour_attention_single_slot_returns_its_value() -> None:
    torch.manual_seed(0)
    att = BehaviourAttention(2, 2, 3)
    v = torch.randn(1, 4, 5)
    with torch.no_grad():
        got = att(torch.randn(1, 3, 2), torch.randn(1, 4, 2), v, _mask([1], 4))
    torch.testing.assert_close(got[0], v[0, :1].expand(3, 5), atol=1e-6, rtol=0)


def test_hubsm_step_matches_full_forward() -> None:
    """The incremental encoding (one GRU step per new behaviour) equals the batch encoding."""
    torch.manual_seed(0)
    vocab = (5, 3, 4)
    enc = HUBSMEncoder(emb_dim=6, action_vocab=vocab, cfg_hidden=8, layers=3, action_dim=2)
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(2, 5, 6, generator=g)
    act = _acts(vocab, (2, 5), g)
    with torch.no_grad():
        full = enc(emb, act)  # (B, T, 2H)
        state = enc.initial_state(2)
        assert state.shape == (2, 3, 2, 8)
        for t in range(5):
            step, state = enc.step(emb[:, t], act[:, t], state)
            torch.testing.assert_close(step, full[:, t], atol=1e-6, rtol=0)
    assert full.shape == (2, 5, 16) and enc.out_dim == 16


def test_hubsm_branch_single_slot_context_is_action_item_time() -> None:
    """Keys [p̂, τ], values [â, p̂, τ]: with one real slot the context is exactly its value."""
    torch.manual_seed(0)
    vocab = (5, 3, 7)  # two actions, time-since last
    br = BehaviourBranch(
        "hubsm", 6, vocab, q_dim=4, hidden=8, layers=2, action_dim=2, time_dim=3, attention=5
    )
    g = torch.Generator().manual_seed(4)
    emb = torch.randn(1, 3, 6, generator=g)
    act = _acts(vocab, (1, 3), g)
    with torch.no_grad():
        enc = br.encode(emb, act)
        out = br.attend(torch.randn(1, 2, 4, generator=g), enc, act[..., -1], _mask([1], 3))
        p_hat, _ = br.encoder.item_gru(emb[:, :1])
        a_hat, _ = br.encoder.action_gru(br.encoder.actions(act[:, :1, :-1]))
        tau = br.time(act[:, 0, -1])
    want = torch.cat([a_hat[0, 0], p_hat[0, 0], tau[0]])
    assert br.out_dim == 2 * 8 + 3 and out.shape == (1, 2, 19)
    torch.testing.assert_close(out[0], want.expand(2, 19), atol=1e-6, rtol=0)


def test_hubsm_time_since_enters_only_the_attention() -> None:
    model = _model("crban-hubsm")
    net = model.device
    x = _default_inputs(model)
    y = list(x)
    for i in (4, 7):  # IE and IPV action columns; change the time-since bucket on real slots
        y[i] = x[i].clone()
        y[i][..., -1] = torch.where(x[i + 1], (x[i][..., -1] % 13) + 1, 0)  # 13 time buckets
        assert not torch.equal(y[i], x[i])
    with torch.no_grad():
        enc_x, enc_y = net.encode(x[3], x[4], x[6], x[7]), net.encode(y[3], y[4], y[6], y[7])
        assert torch.equal(enc_x[0], enc_y[0]) and torch.equal(enc_x[1], enc_y[1])
        a, b = net(*x), net(*y)
    # rows with some behaviour move; the row with neither sequence does not
    assert not torch.allclose(a[0], b[0], atol=1e-6)
    torch.testing.assert_close(a[4], b[4], atol=0, rtol=0)
    # changing a stored action column (not time) does change the encoding
    z = list(x)
    z[4] = x[4].clone()
    z[4][..., 0] = torch.where(x[5], (x[4][..., 0] % 9) + 1, 0)
    with torch.no_grad():
        assert not torch.equal(net.encode(z[3], z[4], z[6], z[7])[0], enc_x[0])


@pytest.mark.parametrize("col", range(len(SIM_SCHEMA.ie_action_vocab)))
def test_huism_ignores_every_action_column(col: int) -> None:
    model = _model("crban-huism")
    x = _default_inputs(model)
    g = torch.Generator().manual_seed(col)
    y = list(x)
    for i, vocab in ((4, SIM_SCHEMA.ie_action_vocab), (7, SIM_SCHEMA.ipv_action_vocab)):
        y[i] = x[i].clone()
        c = min(col, len(vocab) - 1)
        y[i][..., c] = torch.randint(0, int(vocab[c]), x[i].shape[:2], generator=g)
    with torch.no_grad():
        assert torch.equal(model.device(*x), model.device(*y))
