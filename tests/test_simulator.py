"""The waterfall-feed simulator: determinism, structure, and the signals it must carry."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.config import SimConfig, load_config
from shoal.datasets.requests import TRIGGERS
from shoal.datasets.sim.world import rowwise_searchsorted
from shoal.datasets.simulator import Simulator, history_end
from shoal.experiments import sim_signals


@pytest.fixture(scope="module")
def cfg():
    return load_config()  # the default population: 2,000 users


@pytest.fixture(scope="module")
def sim(cfg):
    return Simulator(cfg.sim, cfg.seed)


@pytest.fixture(scope="module")
def log(sim):
    return sim.generate()


def test_same_seed_same_data_other_seed_other_data() -> None:
    c = SimConfig(users=150, items=3000)
    a, b = Simulator(c, 5).generate(), Simulator(c, 5).generate()
    for k, v in a.arrays().items():
        np.testing.assert_array_equal(v, b.arrays()[k], err_msg=k)
    other = Simulator(c, 6).generate()
    assert other.n_requests != a.n_requests or not np.array_equal(other.ie_item, a.ie_item)


def test_state_dict_rebuilds_the_same_simulator() -> None:
    sim = Simulator(SimConfig(users=80, items=2000), 3)
    again = Simulator.from_state_dict(sim.state_dict())
    np.testing.assert_array_equal(sim.generate().req_time, again.generate().req_time)


def test_ctr_in_realistic_range(log) -> None:
    click, _ = log.exposure_clicks()
    assert 0.02 <= click.mean() <= 0.10


def test_position_bias_is_monotone(log) -> None:
    ctr = sim_signals.position_ctr(log, width=10)["ctr"]
    assert len(ctr) == 5  # page size 50
    assert all(a > b for a, b in zip(ctr, ctr[1:])), ctr
    assert ctr[0] > 2 * ctr[-1]


def test_examination_decays_with_position(log) -> None:
    """Clicks over true relevance (truth at request time) falls with the page slot: the drop
    is position bias, not only the cloud putting its best guesses first."""
    b = log.batch(np.arange(0, log.n_requests, 3))
    m = b.label_mask
    pos, clicks, truth = b.cand_pos[m], b.click[m], b.truth[m]
    ratio = [
        clicks[(pos >= lo) & (pos < lo + 10)].sum() / truth[(pos >= lo) & (pos < lo + 10)].sum()
        for lo in (0, 10, 20, 30, 40)
    ]
    assert all(a > b for a, b in zip(ratio, ratio[1:])), ratio


def test_activity_is_long_tailed(log) -> None:
    st = sim_signals.activity_stats(log)
    assert st["top10_share"] > 0.35  # the 10% most active users hold over a third of exposures
    assert st["gini"] > 0.45
    p10, p50, p90, _ = st["quantiles_10_50_90_99"]
    assert st["mean"] > 1.5 * p50 and p90 > 3 * p50 and p50 > 3 * p10


def test_requests_fire_at_edgerec_triggers(log, cfg) -> None:
    counts = np.bincount(log.req_trigger, minlength=len(TRIGGERS))
    assert counts[TRIGGERS.index("window")] == 0
    assert all(counts[TRIGGERS.index(t)] > 0 for t in ("click", "delete", "exposures"))
    # candidates = the rest of the page's 100, so a request at page slot s has 99 - s of them
    k = log.req_end - log.req_start
    assert k.max() <= cfg.sim.candidates - 1 and k.min() >= cfg.sim.candidates - cfg.sim.page_size
    # every click fires a request unless it was the page's last slot
    b = log.batch(np.flatnonzero(log.req_trigger == TRIGGERS.index("click"))[:500])
    assert np.all(b.ipv_len > 0)


def test_requests_see_only_the_past(log) -> None:
    u = log.req_user
    last_ie = log.req_ie_end - 1
    assert np.all(log.req_ie_end > log.ie_offsets[u])  # a request follows an exposure
    assert np.all(log.ie_time[last_ie] <= log.req_time)
    nxt = np.minimum(log.req_ie_end, log.ie_item.size - 1)
    later = (log.req_ie_end < log.ie_offsets[u + 1]) & (log.ie_time[nxt] <= log.req_time)
    assert not later.any()  # and no exposure at or before the request is left out


def test_history_end_matches_a_python_loop() -> None:
    rng = np.random.default_rng(0)
    ev_user = np.sort(rng.integers(0, 5, 60))
    ev_time = np.concatenate([np.sort(rng.integers(0, 20, (ev_user == u).sum())) for u in range(5)])
    q_user, q_time = rng.integers(0, 6, 40), rng.integers(-1, 22, 40)
    got = history_end(ev_user, ev_time.astype(float), q_user, q_time.astype(float))
    for i in range(40):
        expect = max(
            (j + 1 for j in range(60) if ev_user[j] == q_user[i] and ev_time[j] <= q_time[i]),
            default=int(np.searchsorted(ev_user, q_user[i])),
        )
        assert got[i] == expect


def test_rowwise_searchsorted_samples_each_rows_distribution() -> None:
    w = np.array([[0.0, 1, 1, 2], [0, 0, 3, 1]])
    draws = rowwise_searchsorted(np.cumsum(w, 1), np.random.default_rng(1).random((2, 40000)))
    freq = np.stack([np.bincount(r, minlength=4) / 40000 for r in draws])
    np.testing.assert_allclose(freq, w / w.sum(1, keepdims=True), atol=0.01)


def test_behaviour_features_beat_the_same_model_without(log, cfg) -> None:
    out = sim_signals.behaviour_signal(log, cfg)
    assert out["gauc_behaviour"] > out["gauc_base"] + 0.01, out


def test_personalization_matters_for_users_with_enough_data(log, cfg) -> None:
    out = sim_signals.personalization_signal(log, cfg)
    head = out["by_bucket"]["head"]
    assert head["users"] >= 100
    assert head["gap"] > 0.01, out["by_bucket"]
    # the gap is reported for every bucket (tail users have too little data to gain)
    assert set(out["by_bucket"]) == {"tail", "torso", "head"}
    assert out["by_bucket"]["tail"]["gap"] < head["gap"]


def test_online_policy_evaluation(sim, log) -> None:
    users = np.arange(400)
    cloud = sim.evaluate_policy(None, users=users, sessions=2, history=log)
    same = sim.evaluate_policy(
        lambda b: -b.cand_pos.astype(float), users=users, sessions=2, history=log
    )
    # common random numbers: showing the cloud order through a policy changes nothing
    assert same["clicks"] == cloud["clicks"] and same["exposures"] == cloud["exposures"]
    assert same["rerank_calls"] > 0
    w = sim.world

    def good(b):
        return w.static_utility(b.user.astype(np.int64), b.cand_item)

    better = sim.evaluate_policy(good, users=users, sessions=2, history=log)
    worse = sim.evaluate_policy(lambda b: -good(b), users=users, sessions=2, history=log)
    assert better["ctr"] > 1.2 * cloud["ctr"] > 1.2 * worse["ctr"]


def test_online_batches_have_the_offline_layout(sim, log) -> None:
    seen = {}

    def spy(b):
        seen.setdefault("b", b)
        return np.zeros(b.cand_item.shape)

    sim.evaluate_policy(spy, users=np.arange(20), history=log)
    b, off = seen["b"], log.batch(np.arange(3))
    for name in ("cand_feat", "cand_score", "ie_item", "ie_act", "ipv_act", "label"):
        got, ref = getattr(b, name), getattr(off, name)
        assert got.dtype == ref.dtype and got.shape[2:] == ref.shape[2:], name
    assert b.ie_item.shape[1] == 50 and np.all(b.ie_len > 0)  # history carried over from the log


def test_bad_policy_output_is_refused(sim) -> None:
    with pytest.raises(ValueError, match="policy returned"):
        sim.evaluate_policy(lambda b: np.zeros((1, 1)), users=np.arange(5))
    with pytest.raises(ValueError, match="non-finite"):
        sim.evaluate_policy(lambda b: np.full(b.cand_item.shape, np.nan), users=np.arange(5))
