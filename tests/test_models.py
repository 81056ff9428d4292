"""Reranker models (``shoal.client.models``): shapes on every registered model, what each
Table 2 variant sees, padding invariance, the parts against slow loop references (list context,
last state, behaviour attention, incremental HUBSM), the cloud/device split and sizes, task
targets, score standardization, and one optimizer step."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from _builders import tiny_log, tiny_schema
from torch import nn

from shoal.client.models import (
    EDGEREC_VARIANTS,
    INPUT_NAMES,
    EdgeRecNet,
    KuaishouConfig,
    KuaishouNet,
    Reranker,
    build_model,
)
from shoal.client.models.kuaishou import MMoE, TargetAttention
from shoal.client.models.parts import (
    BehaviourAttention,
    BehaviourBranch,
    CandidateEncoder,
    HUBSMEncoder,
    HUISMEncoder,
    ListContext,
    last_state,
)
from shoal.client.models.reranker import HAS_NEXT, batch_tensors, score_stats, task_targets
from shoal.config import ModelConfig, SimConfig
from shoal.datasets.kuairand import LABEL_NAMES as KUAIRAND_LABELS
from shoal.datasets.requests import RequestLog
from shoal.datasets.schema import Schema
from shoal.datasets.simulator import Simulator, sim_schema
from shoal.registry import MODELS

ALL_MODELS = MODELS.names()
SIM_SCHEMA = sim_schema(SimConfig())
SMALL_SIM = SimConfig(
    users=20, items=300, categories=10, brands=30, candidates=20, page_size=10, max_pages=2
)
N_ITEMS = 60  # catalog of the random batches

# what each model's score depends on: (other candidates, IE sequence, IPV sequence, actions)
SEES = {
    "dnn-rank": (False, False, False, False),
    "dlcm": (True, False, False, False),
    "crban-hubsm-ie": (True, True, False, True),
    "crban-hubsm-ipv": (True, False, True, True),
    "crban-huism": (True, True, True, False),
    "crban-hubsm": (True, True, True, True),
    "edgerec": (True, True, True, True),
    "kuaishou": (True, True, True, True),
}

# device-network bytes with the default ModelConfig on the default simulator schema
# (quoted in docs/models.md; update both together)
DEVICE_BYTES = {
    "dnn-rank": 10_900,
    "dlcm": 95_124,
    "crban-hubsm-ie": 270_244,
    "crban-hubsm-ipv": 277_812,
    "crban-huism": 133_012,
    "crban-hubsm": 452_932,
    "edgerec": 452_932,
    "kuaishou": 201_916,
}


# ================================================================================== helpers
def _model(name: str, schema: Schema = SIM_SCHEMA, n_items: int = N_ITEMS, **kw) -> Reranker:
    torch.manual_seed(0)
    return build_model(ModelConfig(name=name, **kw), schema, n_items).eval()


def _mask(lengths: list[int], width: int) -> torch.Tensor:
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]


def _acts(vocab: tuple[int, ...], shape: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    cols = [torch.randint(1, int(v), shape, generator=g) for v in vocab]
    return torch.stack(cols, dim=-1)  # (B, T, A + 1), ids >= 1


def random_inputs(
    schema: Schema,
    emb_dim: int,
    k_len: list[int],
    ie_len: list[int],
    ipv_len: list[int],
    seed: int = 0,
    K: int | None = None,
    m: int | None = None,
    n: int | None = None,
) -> list[torch.Tensor]:
    """Device inputs (``INPUT_NAMES`` order) with the given real lengths; padding is zero."""
    g = torch.Generator().manual_seed(seed)
    B = len(k_len)
    K, m, n = K or max(k_len), m or max(ie_len) or 1, n or max(ipv_len) or 1
    S = len(schema.score_names)
    cm, iem, ipm = _mask(k_len, K), _mask(ie_len, m), _mask(ipv_len, n)
    out = [
        torch.randn(B, K, emb_dim, generator=g) * cm[..., None],
        torch.randn(B, K, S, generator=g) * cm[..., None],
        cm,
        torch.randn(B, m, emb_dim, generator=g) * iem[..., None],
        _acts(schema.ie_action_vocab, (B, m), g) * iem[..., None],
        iem,
        torch.randn(B, n, emb_dim, generator=g) * ipm[..., None],
        _acts(schema.ipv_action_vocab, (B, n), g) * ipm[..., None],
        ipm,
    ]
    assert len(out) == len(INPUT_NAMES)
    return out


def scramble_padding(x: list[torch.Tensor], schema: Schema, seed: int) -> list[torch.Tensor]:
    """Random content (valid ids) in every padded slot; real slots untouched."""
    g = torch.Generator().manual_seed(seed)
    out = list(x)
    groups = (
        (0, 1, 2, None),
        (3, 4, 5, schema.ie_action_vocab),
        (6, 7, 8, schema.ipv_action_vocab),
    )
    for a, b, mi, vocab in groups:
        pad = ~x[mi]
        out[a] = torch.where(pad[..., None], 5 * torch.randn(x[a].shape, generator=g), x[a])
        if vocab is None:  # scores
            rnd = 5 * torch.randn(x[b].shape, generator=g)
        else:
            rnd = torch.stack(
                [torch.randint(0, int(v), x[b].shape[:2], generator=g) for v in vocab], -1
            )
        out[b] = torch.where(pad[..., None], rnd, x[b])
    return out


def pad_inputs(x: list[torch.Tensor], dk: int, dm: int, dn: int) -> list[torch.Tensor]:
    """Append ``dk`` candidate, ``dm`` IE and ``dn`` IPV padded slots (zeros, masks False)."""
    out = []
    for i, t in enumerate(x):
        extra = (dk, dk, dk, dm, dm, dm, dn, dn, dn)[i]
        shape = (t.shape[0], extra, *t.shape[2:])
        out.append(torch.cat([t, torch.zeros(shape, dtype=t.dtype)], dim=1))
    return out


def _default_inputs(model: Reranker, schema: Schema = SIM_SCHEMA, seed: int = 0):
    # rows: full, short list, empty IE, empty IPV, both empty, single candidate
    return random_inputs(
        schema,
        model.cloud.out_dim,
        k_len=[7, 3, 5, 6, 4, 1],
        ie_len=[9, 4, 0, 2, 0, 9],
        ipv_len=[5, 1, 3, 0, 0, 5],
        seed=seed,
    )


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest, and steady on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sim_log() -> RequestLog:
    return Simulator(SMALL_SIM, seed=0).generate()


# ============================================================================ shapes, registry
def test_registry_has_table2_variants_alias_and_kuaishou() -> None:
    assert list(EDGEREC_VARIANTS) == [
        "dnn-rank",
        "dlcm",
        "crban-hubsm-ie",
        "crban-hubsm-ipv",
        "crban-huism",
        "crban-hubsm",
    ]
    assert set(SEES) <= set(ALL_MODELS)
    with pytest.raises(ValueError, match="unknown model"):
        build_model(ModelConfig(name="no-such-model"), SIM_SCHEMA, N_ITEMS)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_logits_on_tiny_log(name: str) -> None:
    log = tiny_log()
    model = _model(name, log.schema, log.n_items)
    tb = batch_tensors(log.batch(np.arange(3)))
    with torch.no_grad():
        logits = model(tb)
        again = model.device(*model.ship(tb))
    assert logits.shape == (3, 3, len(model.tasks))
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert torch.equal(logits, again)
    assert model.tasks[0] == "click"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_logits_on_random_and_simulated_batches(name: str, sim_log: RequestLog) -> None:
    model = _model(name)
    with torch.no_grad():
        logits = model.device(*_default_inputs(model))
    assert logits.shape == (6, 7, len(model.tasks))
    assert torch.isfinite(logits).all()

    sim = _model(name, sim_log.schema, sim_log.n_items)
    batch = sim_log.batch(np.arange(min(16, sim_log.n_requests)), ie_len=12, ipv_len=6)
    with torch.no_grad():
        out = sim(batch_tensors(batch))
    assert out.shape == (len(batch), batch.cand_mask.shape[1], len(sim.tasks))
    assert torch.isfinite(out).all()


def test_edgerec_is_an_alias_of_the_full_model() -> None:
    a, b = _model("edgerec"), _model("crban-hubsm")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # same seed, same architecture


# ============================================================================ Table 2 parts
def _modules(net: nn.Module, cls: type) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, cls)]


@pytest.mark.parametrize("name", list(EDGEREC_VARIANTS))
def test_table2_variant_has_exactly_its_parts(name: str) -> None:
    list_ctx, ie, ipv = EDGEREC_VARIANTS[name]
    net = _model(name).device
    assert isinstance(net, EdgeRecNet)
    children = {k for k, v in net.named_children() if v is not None}
    expected = {"candidate", "head"}
    expected |= {"list_context"} if list_ctx else set()
    expected |= {k for k, kind in (("ie", ie), ("ipv", ipv)) if kind != "none"}
    assert children == expected
    assert isinstance(net.list_context, ListContext) == list_ctx
    for branch, kind in ((net.ie, ie), (net.ipv, ipv)):
        if kind == "none":
            assert branch is None
            continue
        assert isinstance(branch, BehaviourBranch) and branch.kind == kind
        enc = HUBSMEncoder if kind == "hubsm" else HUISMEncoder
        assert type(branch.encoder) is enc
    # GRUs: one per list context, two per HUBSM branch, none anywhere else
    n_gru = list_ctx + 2 * [ie, ipv].count("hubsm")
    assert len(_modules(net, nn.GRU)) == n_gru
    # HUISM sees no action or time embedding at all
    assert len(_modules(net, nn.Embedding)) == sum(
        len(v)
        for v, k in ((SIM_SCHEMA.ie_action_vocab, ie), (SIM_SCHEMA.ipv_action_vocab, ipv))
        if k == "hubsm"
    )
    assert len(_modules(net, BehaviourAttention)) == 2 - [ie, ipv].count("none")
    # head input: e (H), [p̂, s] (2H) with list context, branch outputs (+1: attention mass)
    H, T = 32, 8
    d = (
        H
        + 2 * H * list_ctx
        + sum({"hubsm": 2 * H + T + 1, "huism": H + 1, "none": 0}[k] for k in (ie, ipv))
    )
    assert net.head[0][0].in_features == d


def test_kuaishou_parts_and_tasks() -> None:
    net = _model("kuaishou").device
    assert isinstance(net, KuaishouNet)
    assert net.tasks == ("click", HAS_NEXT, "favorite")  # sim labels: no long_view / like
    assert net.cfg.ev_task == "click" and net.cfg.like_task == "favorite"
    assert isinstance(net.list_context, ListContext)
    assert isinstance(net.attention, TargetAttention) and net.attention.heads == 4
    assert isinstance(net.head, MMoE)
    assert len(net.head.gates) == len(net.head.towers) == 3
    assert len(net.head.experts) == 4


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_sees_what_table2_says(name: str) -> None:
    """Perturb one input group at a time (real slots only) and check whether scores move."""
    other, ie, ipv, actions = SEES[name]
    model = _model(name)
    x = _default_inputs(model)
    g = torch.Generator().manual_seed(5)

    def moved(y: list[torch.Tensor]) -> bool:
        with torch.no_grad():
            a, b = model.device(*x), model.device(*y)
        keep = x[2][..., None].expand_as(a)
        return not torch.allclose(a[keep], b[keep], atol=1e-6)

    # other candidates: change candidates 1.. of every row, look at candidate 0 only
    y = list(x)
    y[0] = x[0].clone()
    y[0][:, 1:] += torch.randn(y[0][:, 1:].shape, generator=g) * x[2][:, 1:, None]
    with torch.no_grad():
        a, b = model.device(*x)[:, 0], model.device(*y)[:, 0]
    assert (not torch.allclose(a, b, atol=1e-6)) == other

    def perturbed(i: int, vocab: tuple[int, ...] | None) -> list[torch.Tensor]:
        y = list(x)
        mask = x[i + 2 - (1 if vocab is not None else 0)]
        if vocab is None:
            y[i] = x[i] + torch.randn(x[i].shape, generator=g) * mask[..., None]
        else:
            y[i] = _acts(vocab, x[i].shape[:2], g) * mask[..., None]
        return y

    assert moved(perturbed(3, None)) == ie  # IE item embeddings
    assert moved(perturbed(6, None)) == ipv
    assert moved(perturbed(4, SIM_SCHEMA.ie_action_vocab)) == (ie and actions)
    assert moved(perturbed(7, SIM_SCHEMA.ipv_action_vocab)) == (ipv and actions)


# ====================================================================== padding invariance
@pytest.mark.parametrize("name", ALL_MODELS)
def test_extra_padding_leaves_real_logits_unchanged(name: str) -> None:
    model = _model(name)
    x = _default_inputs(model)
    y = scramble_padding(pad_inputs(x, 4, 6, 3), SIM_SCHEMA, seed=1)
    with torch.no_grad():
        a, b = model.device(*x), model.device(*y)
    assert b.shape == (6, 11, len(model.tasks))
    real = x[2]
    torch.testing.assert_close(b[:, :7][real], a[real], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_content_of_padded_slots_changes_nothing(name: str) -> None:
    model = _model(name)
    x = _default_inputs(model)
    with torch.no_grad():
        ref = model.device(*x)
        for seed in (1, 2):
            out = model.device(*scramble_padding(x, SIM_SCHEMA, seed))
            torch.testing.assert_close(out[x[2]], ref[x[2]], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_empty_behaviour_sequences(name: str) -> None:
    model = _model(name)
    D = model.cloud.out_dim
    # every request without IE, or without IPV, or without either
    for ie_len, ipv_len in (([0, 0], [2, 1]), ([3, 1], [0, 0]), ([0, 0], [0, 0])):
        x = random_inputs(SIM_SCHEMA, D, [4, 2], ie_len, ipv_len, seed=3, m=3, n=2)
        with torch.no_grad():
            out = model.device(*x)
        assert out.shape == (2, 4, len(model.tasks))
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_select_scores_a_subset_of_the_full_list(name: str) -> None:
    """``select`` picks candidates to score; the list context still sees the whole list."""
    model = _model(name)
    x = _default_inputs(model)
    sel = torch.tensor([[6, 0, 2], [1, 0, 0], [4, 3, 0], [5, 0, 1], [0, 3, 2], [0, 0, 0]])
    with torch.no_grad():
        full = model.device(*x)
        part = model.device(*x, select=sel)
    assert part.shape == (6, 3, len(model.tasks))
    want = full.gather(1, sel[..., None].expand(-1, -1, full.shape[-1]))
    torch.testing.assert_close(part, want, atol=1e-6, rtol=0)


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


# ===================================================================== cloud / device split
@pytest.mark.parametrize("name", ALL_MODELS)
def test_device_holds_no_catalog_table(name: str) -> None:
    n_items = 5000
    model = _model(name, n_items=n_items, id_dim=16)  # with an item-id table (default: none)
    max_action = max(SIM_SCHEMA.ie_action_vocab + SIM_SCHEMA.ipv_action_vocab)
    dev_tables = _modules(model.device, nn.Embedding)
    assert all(t.num_embeddings <= max_action for t in dev_tables)
    cloud_tables = _modules(model.cloud, nn.Embedding)
    sizes = sorted(t.num_embeddings for t in cloud_tables)
    assert sizes == sorted([*SIM_SCHEMA.item_vocab, n_items + 1])
    # every item-sized table of the whole model is in the cloud part
    assert {id(t) for t in _modules(model, nn.Embedding) if t.num_embeddings > max_action} == {
        id(t) for t in cloud_tables if t.num_embeddings > max_action
    }
    assert model.cloud.out_dim == 8 * len(SIM_SCHEMA.item_vocab) + 16
    dev_params = {id(p) for p in model.device.parameters()}
    assert not dev_params & {id(p) for p in model.cloud.parameters()}


@pytest.mark.parametrize("name", ALL_MODELS)
def test_size_bytes_is_parameters_plus_buffers(name: str) -> None:
    net = _model(name).device
    want = 0
    for _, p in net.named_parameters():
        want += p.numel() * 4
    for _, b in net.named_buffers():
        want += b.numel() * 4
    assert net.size_bytes() == want
    assert len(list(net.buffers())) == 2  # score mean and std ship with the network


@pytest.mark.parametrize("name", ALL_MODELS)
def test_device_size_with_default_config(name: str) -> None:
    model = build_model(ModelConfig(name=name), SIM_SCHEMA, SimConfig().items)
    assert model.device.size_bytes() == DEVICE_BYTES[name]
    assert model.device.size_bytes() < 1_000_000


def test_ship_looks_up_the_cloud_tables() -> None:
    log = tiny_log()
    model = _model("crban-hubsm", log.schema, log.n_items, id_dim=16)
    tb = batch_tensors(log.batch(np.arange(3)))
    shipped = model.ship(tb)
    assert len(shipped) == len(INPUT_NAMES)
    cl = model.cloud
    b, k = 2, 1
    item, feat = tb["cand_item"][b, k], tb["cand_feat"][b, k]
    want = torch.cat(
        [cl.fields[0].weight[feat[0]], cl.fields[1].weight[feat[1]], cl.item_id.weight[item]]
    )
    torch.testing.assert_close(shipped[0][b, k], want, atol=0, rtol=0)
    # padding looks up zeros
    assert torch.equal(shipped[3][0, 10], torch.zeros(cl.out_dim))
    for i in (1, 2, 4, 5, 7, 8):
        assert shipped[i] is tb[INPUT_NAMES[i]]


# ============================================================================== task targets
def test_task_targets_on_tiny_log() -> None:
    log = tiny_log()
    batch = log.batch(np.arange(3))
    target, mask = task_targets(batch, ("click", HAS_NEXT, "buy"), log.schema)
    assert target.dtype == np.float32 and mask.dtype == np.bool_
    assert target.shape == mask.shape == (3, 3, 3)
    obs = [[1, 1, 0], [0, 0, 0], [1, 1, 0]]
    assert mask[..., 0].astype(int).tolist() == obs
    assert np.array_equal(mask[..., 1], mask[..., 0]) and np.array_equal(mask[..., 2], mask[..., 0])
    assert target[..., 0].tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 1]]
    # r0: candidate 0 observed and candidate 1 after it observed; candidate 1 is the last
    assert target[..., 1].tolist() == [[1, 0, 0], [0, 0, 0], [1, 0, 0]]
    assert target[..., 2].tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 1]]


def test_has_next_hand_computed() -> None:
    batch = tiny_log().batch(np.arange(1))
    obs = np.array(
        [
            [1, 0, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 1],
            [1, 0, 0, 0, 1],
        ],
        bool,
    )
    want = [
        [1, 0, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [1, 0, 0, 0, 0],
    ]
    b = dataclasses.replace(batch, label_mask=obs, label=np.zeros((6, 5, 2), np.int8))
    target, mask = task_targets(b, (HAS_NEXT,), tiny_schema())
    assert target[..., 0].astype(int).tolist() == want
    assert np.array_equal(mask[..., 0], obs)
    # reference: observed and some strictly later candidate observed
    ref = [[bool(o[k] and o[k + 1 :].any()) for k in range(5)] for o in obs]
    assert target[..., 0].astype(bool).tolist() == ref


def test_task_targets_pick_label_columns_by_name() -> None:
    batch = tiny_log().batch(np.arange(1))
    label = np.zeros((1, 3, 2), np.int8)
    label[0, :, 0] = [1, 0, 0]  # click
    label[0, :, 1] = [0, 0, 1]  # buy
    b = dataclasses.replace(batch, label=label, label_mask=np.ones((1, 3), bool))
    target, _ = task_targets(b, ("buy", "click"), tiny_schema())
    assert target[0].T.tolist() == [[0, 0, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="like"):
        task_targets(b, ("click", "like"), tiny_schema())


# ========================================================================= score statistics
def test_score_stats_and_standardization() -> None:
    batch = tiny_log().batch(np.arange(3))
    mean, std = score_stats(batch)
    real = np.array([0.9, 0.8, 0.7, 0.7, 0.4, 0.3, 0.2], np.float32).astype(np.float64)
    assert mean.dtype == torch.float32 and mean.shape == (1,)
    np.testing.assert_allclose(mean.numpy(), [real.mean()], rtol=1e-6)
    np.testing.assert_allclose(std.numpy(), [real.std()], rtol=1e-6)  # population std

    torch.manual_seed(0)
    enc = CandidateEncoder(emb_dim=2, n_scores=1, hidden=3)
    enc.set_score_stats(mean, std)
    emb = torch.randn(1, 7, 2)
    score = torch.tensor(real, dtype=torch.float32).view(1, 7, 1)
    z = (score - mean) / std
    assert abs(float(z.mean())) < 1e-6 and abs(float(z.std(unbiased=False)) - 1) < 1e-5
    with torch.no_grad():
        want = torch.relu(enc.proj(torch.cat([emb, z], -1)))
        torch.testing.assert_close(enc(emb, score), want, atol=1e-6, rtol=0)

    # zero std is clamped; a batch without real candidates gives the identity transform
    enc.set_score_stats(torch.tensor([2.0]), torch.tensor([0.0]))
    assert float(enc.score_std) == pytest.approx(1e-6)
    empty = dataclasses.replace(batch, cand_mask=np.zeros_like(batch.cand_mask))
    m0, s0 = score_stats(empty)
    assert m0.tolist() == [0.0] and s0.tolist() == [1.0]


@pytest.mark.parametrize("name", ["dnn-rank", "crban-hubsm", "kuaishou"])
def test_device_set_score_stats_ships_in_state_dict(name: str) -> None:
    net = _model(name).device
    net.set_score_stats(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]))
    sd = net.state_dict()
    assert sd["candidate.score_mean"].tolist() == [1.0, 2.0]
    assert sd["candidate.score_std"].tolist() == [3.0, 4.0]


# =============================================================================== gradients
def _loss(model: Reranker, tb, target, tmask) -> torch.Tensor:
    logits = model(tb)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * tmask).sum() / tmask.sum()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_one_adam_step_decreases_loss(name: str, sim_log: RequestLog) -> None:
    model = _model(name, sim_log.schema, sim_log.n_items, tasks=["click", "favorite"])
    batch = sim_log.batch(np.arange(min(32, sim_log.n_requests)), ie_len=10, ipv_len=5)
    tb = batch_tensors(batch)
    t, m = task_targets(batch, model.tasks, sim_log.schema)
    target, tmask = torch.from_numpy(t), torch.from_numpy(m).float()
    assert tmask.sum() > 0
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = _loss(model, tb, target, tmask)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = _loss(model, tb, target, tmask)
    assert float(after) < float(before.detach())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_device_parameter_gets_a_gradient(name: str) -> None:
    model = _model(name).train()
    x = random_inputs(SIM_SCHEMA, model.cloud.out_dim, [5, 4, 3], [6, 3, 2], [3, 2, 1], seed=7)
    g = torch.Generator().manual_seed(8)
    logits = model.device(*x)
    target = torch.randint(0, 2, logits.shape, generator=g).float()
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    (bce * x[2][..., None]).sum().backward()
    dead = [
        k
        for k, p in model.device.named_parameters()
        if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert dead == []


# ============================================================================ Kuaishou config
def _kcfg(labels: tuple[str, ...], **kw) -> KuaishouConfig:
    return KuaishouConfig.from_model_config(
        ModelConfig(name="kuaishou", **kw),
        emb_dim=8,
        n_scores=1,
        ie_action_vocab=(3, 4),
        ipv_action_vocab=(3, 4),
        label_names=labels,
    )


def test_kuaishou_config_on_simulator_labels() -> None:
    cfg = _kcfg(SIM_SCHEMA.label_names)
    assert SIM_SCHEMA.label_names == ("click", "cart", "buy", "favorite", "delete")
    assert cfg.tasks == ("click", HAS_NEXT, "favorite")
    assert cfg.ev_task == "click" and cfg.like_task == "favorite"


def test_kuaishou_config_on_kuairand_labels() -> None:
    assert KUAIRAND_LABELS[:3] == ("click", "long_view", "like")
    cfg = _kcfg(KUAIRAND_LABELS)
    assert cfg.tasks == ("click", HAS_NEXT, "long_view", "like")
    assert cfg.ev_task == "long_view" and cfg.like_task == "like"
    # favorite is asked for but KuaiRand has no such label; like wins over favorite anyway
    cfg = _kcfg((*KUAIRAND_LABELS, "favorite"))
    assert cfg.tasks == ("click", HAS_NEXT, "long_view", "like", "favorite")
    assert cfg.like_task == "like"


def test_kuaishou_config_click_only_and_task_order() -> None:
    cfg = _kcfg(("click",))
    assert cfg.tasks == ("click", HAS_NEXT) and cfg.ev_task == "click" and cfg.like_task is None
    cfg = _kcfg(SIM_SCHEMA.label_names, tasks=["delete", "click", "buy"], beam=2, beam_depth=3)
    assert cfg.tasks == ("click", HAS_NEXT, "delete", "buy")
    assert cfg.like_task is None and (cfg.beam, cfg.beam_depth) == (2, 3)
    assert (cfg.alpha, cfg.beta) == (1.0, 0.5)


def test_kuaishou_config_rejects_bad_tasks() -> None:
    base = dict(emb_dim=4, n_scores=1, ie_action_vocab=(3,), ipv_action_vocab=(3,))
    with pytest.raises(ValueError, match="has_next"):
        KuaishouConfig(**base, tasks=("click", "like"))
    with pytest.raises(ValueError, match="click"):
        KuaishouConfig(**base, tasks=(HAS_NEXT, "click"))
    with pytest.raises(ValueError, match="long_view"):
        KuaishouConfig(**base, ev_task="long_view")
    with pytest.raises(ValueError, match="heads"):
        KuaishouConfig(**base, hidden=10, heads=4)


def test_kuaishou_tasks_follow_the_schema() -> None:
    schema = dataclasses.replace(SIM_SCHEMA, label_names=KUAIRAND_LABELS)
    net = _model("kuaishou", schema).device
    x = _default_inputs(_model("kuaishou"))
    with torch.no_grad():
        out = net(*x)
    assert net.tasks == ("click", HAS_NEXT, "long_view", "like")
    assert out.shape == (6, 7, 4)
