"""Kuaishou's next-slot beam search over ListReward (``shoal.client.models.kuaishou``) against
brute force over all permutations, the ratio order (exchange argument) and a greedy loop."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from shoal.client.models import KuaishouConfig, KuaishouNet, build_model
from shoal.client.models.kuaishou import beam_order_scores, list_reward
from shoal.client.models.reranker import HAS_NEXT
from shoal.config import ModelConfig, SimConfig
from shoal.datasets.simulator import sim_schema

SEEDS = range(6)


# ================================================================================== helpers
def _instance(seed: int, K: int, lengths: list[int]) -> tuple[torch.Tensor, ...]:
    """(B, K) p_next, reward in (0, 1) float64 and a left-aligned mask; padding holds garbage."""
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    p_next = torch.rand(B, K, generator=g, dtype=torch.float64)
    reward = 1.5 * torch.rand(B, K, generator=g, dtype=torch.float64)  # α p_ev + β p_like
    mask = torch.arange(K)[None, :] < torch.tensor(lengths)[:, None]
    return p_next, reward, mask


def _order(scores: torch.Tensor, n_real: int) -> list[int]:
    """The displayed order of one row: real candidates by descending score."""
    order = sorted(range(n_real), key=lambda i: -float(scores[i]))
    assert all(float(scores[i]) >= 0 for i in order)
    return order


def _reward(order: list[int], p_next: torch.Tensor, reward: torch.Tensor) -> float:
    """ListReward of one row, by hand: Σ_i (Π_{j before i} p_j) r_i."""
    total, surv = 0.0, 1.0
    for i in order:
        total += surv * float(reward[i])
        surv *= float(p_next[i])
    return total


def _best(p_next: torch.Tensor, reward: torch.Tensor, n_real: int) -> float:
    return max(_reward(list(p), p_next, reward) for p in itertools.permutations(range(n_real)))


def _ratio_order(p_next: torch.Tensor, reward: torch.Tensor, n_real: int) -> list[int]:
    return sorted(range(n_real), key=lambda i: -float(reward[i] / (1 - p_next[i])))


# ================================================================================ list_reward
def test_list_reward_hand_computed() -> None:
    p = torch.tensor([[0.5, 0.8, 0.25]], dtype=torch.float64)
    r = torch.tensor([[1.0, 2.0, 4.0]], dtype=torch.float64)
    got = list_reward(torch.tensor([[2, 0, 1]]), p, r)
    assert got.shape == (1,)
    assert float(got[0]) == pytest.approx(4.0 + 0.25 * 1.0 + 0.25 * 0.5 * 2.0)
    # a prefix of the list is scored on its own; batched rows are independent
    orders = torch.tensor([[1, 2], [0, 1]])
    got = list_reward(orders, p.expand(2, 3), r.expand(2, 3))
    assert got.tolist() == pytest.approx([2.0 + 0.8 * 4.0, 1.0 + 0.5 * 2.0])


@pytest.mark.parametrize("seed", SEEDS)
def test_list_reward_matches_hand_loop(seed: int) -> None:
    p, r, _ = _instance(seed, 5, [5, 5, 5])
    g = torch.Generator().manual_seed(100 + seed)
    orders = torch.stack([torch.randperm(5, generator=g) for _ in range(3)])
    got = list_reward(orders, p, r)
    for b in range(3):
        assert float(got[b]) == pytest.approx(_reward(orders[b].tolist(), p[b], r[b]), abs=1e-12)


# ================================================================================ optimality
@pytest.mark.parametrize("K", range(1, 7))
@pytest.mark.parametrize("seed", SEEDS)
def test_wide_beam_finds_the_brute_force_optimum(K: int, seed: int) -> None:
    lengths = [K, max(K - 1, 1), max(K // 2, 1), 1]
    p, r, mask = _instance(seed, K, lengths)
    scores = beam_order_scores(p, r, mask, beam=math.factorial(K), depth=K)
    assert scores.shape == (4, K) and scores.dtype == torch.float64
    for b, L in enumerate(lengths):
        order = _order(scores[b], L)
        assert sorted(order) == list(range(L))
        best = _best(p[b], r[b], L)
        assert _reward(order, p[b], r[b]) == pytest.approx(best, abs=1e-12)
        # and the library's list_reward agrees with the hand loop on that order
        lr = list_reward(torch.tensor([order]), p[b : b + 1], r[b : b + 1])
        assert float(lr[0]) == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("K", range(1, 7))
@pytest.mark.parametrize("seed", SEEDS)
def test_ratio_order_is_optimal(K: int, seed: int) -> None:
    """Exchange argument: i before j iff r_i (1 - p_j) > r_j (1 - p_i)."""
    p, r, _ = _instance(seed, K, [K])
    order = _ratio_order(p[0], r[0], K)
    assert _reward(order, p[0], r[0]) == pytest.approx(_best(p[0], r[0], K), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_depth_zero_is_the_ratio_order(seed: int) -> None:
    p, r, mask = _instance(seed, 6, [6, 4])
    scores = beam_order_scores(p, r, mask, beam=3, depth=0)
    for b, L in enumerate([6, 4]):
        assert _order(scores[b], L) == _ratio_order(p[b], r[b], L)
        assert (scores[b, :L] < 6).all()


# =================================================================================== greedy
def _greedy(p: torch.Tensor, r: torch.Tensor, n_real: int) -> list[int]:
    """Slot by slot, the item with the largest marginal gain surv · r_i."""
    left, order, surv = set(range(n_real)), [], 1.0
    while left:
        i = max(left, key=lambda j: surv * float(r[j]))
        order.append(i)
        left.remove(i)
        surv *= float(p[i])
    return order


@pytest.mark.parametrize("K", [2, 4, 6])
@pytest.mark.parametrize("seed", SEEDS)
def test_width_one_beam_is_greedy(K: int, seed: int) -> None:
    lengths = [K, K - 1, 1]
    p, r, mask = _instance(seed, K, lengths)
    scores = beam_order_scores(p, r, mask, beam=1, depth=K)
    for b, L in enumerate(lengths):
        assert _order(scores[b], L) == _greedy(p[b], r[b], L)


def test_width_one_beam_can_miss_the_optimum() -> None:
    """Why the beam is there: greedy takes the big reward first and loses the list."""
    p = torch.tensor([[0.0, 0.99]], dtype=torch.float64)
    r = torch.tensor([[1.0, 0.9]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    greedy = _order(beam_order_scores(p, r, mask, beam=1, depth=2)[0], 2)
    wide = _order(beam_order_scores(p, r, mask, beam=2, depth=2)[0], 2)
    assert greedy == [0, 1] and _reward(greedy, p[0], r[0]) == pytest.approx(1.0)
    assert wide == [1, 0] and _reward(wide, p[0], r[0]) == pytest.approx(0.9 + 0.99)


# ================================================================================== padding
@pytest.mark.parametrize("seed", SEEDS)
def test_padding_scores_minus_one_and_ranks_last(seed: int) -> None:
    lengths = [6, 3, 1, 0]
    p, r, mask = _instance(seed, 6, lengths)
    for beam, depth in ((1, 6), (4, 6), (4, 2), (720, 6), (2, 0)):
        scores = beam_order_scores(p, r, mask, beam=beam, depth=depth)
        assert (scores[~mask] == -1).all()
        assert (scores[mask] >= 0).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_padding_content_does_not_change_the_order(seed: int) -> None:
    lengths = [5, 2, 3]
    p, r, mask = _instance(seed, 7, lengths)
    g = torch.Generator().manual_seed(50 + seed)
    p2 = torch.where(mask, p, torch.rand(p.shape, generator=g, dtype=torch.float64))
    r2 = torch.where(mask, r, 10 * torch.rand(r.shape, generator=g, dtype=torch.float64))
    for beam, depth in ((1, 7), (3, 7), (3, 2), (50, 4)):
        a = beam_order_scores(p, r, mask, beam=beam, depth=depth)
        b = beam_order_scores(p2, r2, mask, beam=beam, depth=depth)
        assert torch.equal(a, b)


@pytest.mark.parametrize("seed", SEEDS)
def test_fewer_real_candidates_than_depth(seed: int) -> None:
    """Rows shorter than the depth: same order as the same row without padding."""
    lengths = [2, 3, 4, 1]
    p, r, mask = _instance(seed, 6, lengths)
    scores = beam_order_scores(p, r, mask, beam=math.factorial(4), depth=6)
    for b, L in enumerate(lengths):
        alone = beam_order_scores(
            p[b : b + 1, :L], r[b : b + 1, :L], mask[b : b + 1, :L], math.factorial(4), L
        )
        assert _order(scores[b], L) == _order(alone[0], L)
        assert _reward(_order(scores[b], L), p[b], r[b]) == pytest.approx(
            _best(p[b], r[b], L), abs=1e-12
        )


# ================================================================== scores and the prefix
@pytest.mark.parametrize("depth", [1, 3, 5])
@pytest.mark.parametrize("seed", SEEDS)
def test_scores_are_the_beam_prefix_then_the_ratio_order(depth: int, seed: int) -> None:
    K = 7
    lengths = [7, 5, 2]
    p, r, mask = _instance(seed, K, lengths)
    scores = beam_order_scores(p, r, mask, beam=3, depth=depth)
    for b, L in enumerate(lengths):
        s = scores[b, :L]
        assert len(set(s.tolist())) == L  # distinct: the descending order is a permutation
        order = _order(scores[b], L)
        n_prefix = min(depth, L)
        prefix, rest = order[:n_prefix], order[n_prefix:]
        # prefix slots score 2K, 2K - 1, ...; the rest stays below K
        assert [float(scores[b, i]) for i in prefix] == [2 * K - j for j in range(n_prefix)]
        assert all(float(scores[b, i]) < K for i in rest)
        assert rest == [i for i in _ratio_order(p[b], r[b], L) if i not in prefix]


@pytest.mark.parametrize("seed", SEEDS)
def test_beam_prefix_is_a_beam_search_result(seed: int) -> None:
    """With a beam as wide as all prefixes, the prefix is the best prefix of that length."""
    K, depth = 5, 2
    p, r, mask = _instance(seed, K, [K])
    scores = beam_order_scores(p, r, mask, beam=K * (K - 1), depth=depth)
    prefix = _order(scores[0], K)[:depth]
    best = max(_reward(list(q), p[0], r[0]) for q in itertools.permutations(range(K), depth))
    assert _reward(prefix, p[0], r[0]) == pytest.approx(best, abs=1e-12)


# ======================================================================= KuaishouNet wiring
def _net(**kw) -> KuaishouNet:
    torch.manual_seed(0)
    cfg = KuaishouConfig(emb_dim=4, n_scores=1, ie_action_vocab=(3,), ipv_action_vocab=(3,), **kw)
    return KuaishouNet(cfg)


@pytest.mark.parametrize("like", ["like", None])
def test_order_scores_use_the_configured_tasks(like: str | None) -> None:
    tasks = ("click", "like", HAS_NEXT, "long_view")
    net = _net(
        tasks=tasks, ev_task="long_view", like_task=like, alpha=0.7, beta=0.4, beam=3, beam_depth=2
    )
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 4, generator=g)
    mask = torch.arange(5)[None, :] < torch.tensor([5, 3, 1])[:, None]
    got = net.order_scores(logits, mask)
    assert got.dtype == logits.dtype and got.shape == (3, 5)
    p = torch.sigmoid(logits.double())
    reward = 0.7 * p[..., 3] + (0.4 * p[..., 1] if like else 0.0)
    want = beam_order_scores(p[..., 2], reward, mask, 3, 2)
    torch.testing.assert_close(got, want.float(), atol=0, rtol=0)
    # a different has_next column gives a different answer: the index is really used
    swapped = logits[..., [0, 1, 3, 2]]
    assert not torch.equal(net.order_scores(swapped, mask), got)


@pytest.mark.parametrize("seed", SEEDS)
def test_order_scores_ignore_the_logits_of_padding(seed: int) -> None:
    """Padded candidates carry garbage logits (sigmoid > 0): they must not steer the beam."""
    net = _net(tasks=("click", HAS_NEXT, "like"), like_task="like", beam=4, beam_depth=10)
    g = torch.Generator().manual_seed(seed)
    lengths = [2, 3, 5, 1, 4]
    mask = torch.arange(8)[None, :] < torch.tensor(lengths)[:, None]
    logits = 2 * torch.randn(5, 8, 3, generator=g)
    for _ in range(5):
        other = torch.where(mask[..., None], logits, 3 * torch.randn(logits.shape, generator=g))
        assert torch.equal(net.order_scores(other, mask), net.order_scores(logits, mask))
    # and each row orders as it would alone, without padding
    got = net.order_scores(logits, mask)
    for b, L in enumerate(lengths):
        alone = net.order_scores(logits[b : b + 1, :L], mask[b : b + 1, :L])
        assert _order(got[b], L) == _order(alone[0], L)


def test_reranker_order_scores_delegate() -> None:
    schema = sim_schema(SimConfig())
    ks = build_model(ModelConfig(name="kuaishou", beam=2, beam_depth=3), schema, 50)
    er = build_model(ModelConfig(name="crban-hubsm"), schema, 50)
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(2, 4, dtype=torch.bool)
    logits = torch.randn(2, 4, len(ks.tasks), generator=g)
    assert torch.equal(ks.order_scores(logits, mask), ks.device.order_scores(logits, mask))
    # pointwise EdgeRec models rank by the click logit
    click = torch.randn(2, 4, 1, generator=g)
    assert torch.equal(er.order_scores(click, mask), click[..., 0])
