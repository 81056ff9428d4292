"""User-level DP-FedAvg: clipping, noise, adaptive clipping, accounting, device-side clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _fed_helpers import reply_message, tiny_cfg
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.common import Message, Metadata
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from shoal.client.dp_clip import CLIPPING_NORM, UNCLIPPED, ClippingMod, clip
from shoal.config import ConfigError
from shoal.strategies import dp_math
from shoal.strategies.dp_accounting import Accountant
from shoal.strategies.fedavg_dp import FedAvgDP

SHAPES = {"w": (40, 50), "b": (50,), "stats": (2,)}


def arrays(vals: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in vals.items()})


def reply(node: int, vals: dict, metrics: dict | None = None) -> Message:
    base = {"num-examples": 3, "train_loss": 0.1}
    vals32 = {k: np.asarray(v, np.float32) for k, v in vals.items()}
    return reply_message(node, vals32, {**base, **(metrics or {})})


def strategy(tmp_path, *overrides: str, n: int = 100, q: float = 0.2) -> FedAvgDP:
    cfg = tiny_cfg(tmp_path, f"fed.fraction={q}", *overrides)
    s = FedAvgDP(cfg, str(tmp_path))
    s.n_devices = n
    s.param_keys = {"w", "b"}  # "stats" is a buffer: never noised
    rng = np.random.default_rng(0)
    s._global = {k: rng.normal(size=shp).astype(np.float32) for k, shp in SHAPES.items()}
    return s


def with_delta(s: FedAvgDP, scale: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        k: g + (scale * rng.normal(size=g.shape) if k != "stats" else 0)
        for k, g in s._global.items()
    }


def flat(vals, keys=("w", "b")) -> np.ndarray:
    return np.concatenate([np.asarray(vals[k], np.float64).ravel() for k in keys])


def test_clip_bounds_norm_and_survives_zero_updates() -> None:
    d = np.array([3.0, 4.0])
    c, norm, bit = clip(d, 1.0)
    assert norm == 5.0 and not bit and np.allclose(c, [0.6, 0.8])
    z, norm, bit = clip(np.zeros(4), 1.0)
    assert norm == 0.0 and bit and not z.any()  # Flower 1.41 divides by zero here
    with pytest.raises(ValueError, match="clipping norm"):
        clip(d, 0.0)


def test_every_contribution_is_clipped_to_c(tmp_path) -> None:
    s = strategy(tmp_path, "dp.noise_multiplier=0", "dp.clipping_norm=0.5")
    replies = [reply(i, with_delta(s, 0.3 * (i + 1), i)) for i in range(5)]
    new = s.aggregate_arrays(1, replies)
    g = flat(s._global)
    want = sum(
        clip(flat(r) - g, 0.5)[0] for r in (with_delta(s, 0.3 * (i + 1), i) for i in range(5))
    )
    got = (flat({k: new[k].numpy() for k in ("w", "b")}) - g) * s.expected_devices
    assert np.allclose(got, want, atol=1e-4)
    for i in range(5):  # each clipped contribution within C
        assert np.linalg.norm(clip(flat(with_delta(s, 0.3 * (i + 1), i)) - g, 0.5)[0]) <= 0.5 + 1e-9
    assert np.array_equal(new["stats"].numpy(), s._global["stats"])  # buffer untouched
    assert s._release["unclipped_fraction"] == 0.0 and s._release["dp_devices"] == 5


@pytest.mark.parametrize("secure", [False, True])
def test_noise_std_is_z_c_over_m(tmp_path, secure) -> None:
    s = strategy(
        tmp_path,
        "dp.noise_multiplier=1.5",
        "dp.clipping_norm=2.0",
        f"dp.secure_rng={str(secure).lower()}",
    )
    new = s.aggregate_arrays(1, [reply(0, s._global)])  # a zero update: only noise moves
    noise = flat({k: new[k].numpy() for k in ("w", "b")}) - flat(s._global)
    want = 1.5 * 2.0 / s.expected_devices  # z·C/m with m = qN = 20
    n = noise.size  # 2,050 draws: the sample std is within 4/sqrt(2n) of the truth
    assert abs(noise.std() / want - 1) < 4 / math.sqrt(2 * n)
    assert abs(noise.mean()) < 4 * want / math.sqrt(n)
    assert s._release["noise_std"] == pytest.approx(want)


def test_noise_is_seeded_and_resumes_exactly(tmp_path) -> None:
    a, b = strategy(tmp_path), strategy(tmp_path)
    r = [reply(0, with_delta(a, 0.01, 3))]
    a.aggregate_arrays(1, r)
    b.load_state_dict(a.state_dict())  # b continues where a stopped
    x, y = a.aggregate_arrays(2, r), b.aggregate_arrays(2, r)
    assert np.array_equal(x["w"].numpy(), y["w"].numpy())
    assert a.accountant.epsilon() == b.accountant.epsilon()


def test_device_side_clipping_mod_and_server_check(tmp_path) -> None:
    s = strategy(tmp_path, "dp.clipping=device", "dp.noise_multiplier=0")
    g = arrays(s._global)
    md = Metadata(
        run_id=1,
        message_id="q",
        src_node_id=0,
        dst_node_id=1,
        reply_to_message_id="",
        group_id="",
        created_at=0.0,
        ttl=60,
        message_type="train",
    )
    msg = Message(
        metadata=md, content=RecordDict({"arrays": g, "config": ConfigRecord({CLIPPING_NORM: 1.0})})
    )
    big = with_delta(s, 1.0, 1)
    out = ClippingMod()(msg, None, lambda m, c: reply(1, big))
    sent = flat({k: out.content.array_records["arrays"][k].numpy() for k in ("w", "b")})
    assert np.linalg.norm(sent - flat(s._global)) == pytest.approx(1.0, rel=1e-5)
    assert out.content.metric_records["metrics"][UNCLIPPED] == 0
    assert np.array_equal(out.content.array_records["arrays"]["stats"].numpy(), s._global["stats"])
    # the server drops a reply that ignored the bound, keeps the clipped one
    s.aggregate_arrays(1, [out, reply(2, big)])
    assert s._release["dp_devices"] == 1


def test_weighted_dp_configuration_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="equal weights"):
        FedAvgDP(tiny_cfg(tmp_path, "fed.weighting=examples"), str(tmp_path))
    with pytest.raises(ConfigError, match=r"dp\.clipping"):
        tiny_cfg(tmp_path, "dp.clipping=cloud")


def test_epsilon_matches_opacus_analysis_computed_independently() -> None:
    q, z, rounds, delta = 0.01, 1.1, 100, 1e-5
    acc = Accountant("rdp", delta)
    for _ in range(rounds):
        acc.step(z, q)
    orders = RDPAccountant.DEFAULT_ALPHAS
    eps, _ = get_privacy_spent(
        orders=orders,
        rdp=compute_rdp(q=q, noise_multiplier=z, steps=rounds, orders=orders),
        delta=delta,
    )
    assert acc.epsilon() == pytest.approx(eps, rel=1e-9)
    assert 0.5 < eps < 1.5  # the regime of DP-FedAvg's paper: ~1 after 100 rounds at q=1%
    assert acc.epsilon_after(z, q) > acc.epsilon() and acc.steps == rounds


def test_target_epsilon_stops_before_the_budget_is_exceeded(tmp_path) -> None:
    s = strategy(tmp_path, "dp.target_epsilon=2.0", "dp.noise_multiplier=1.0")
    rounds = 0
    while not s.should_stop(rounds + 1):
        s.aggregate_arrays(rounds + 1, [reply(0, s._global)])
        rounds += 1
    assert s.accountant.epsilon() <= 2.0 < s.accountant.epsilon_after(1.0, 0.2)
    assert rounds >= 1


def test_count_noise_raises_model_noise() -> None:
    assert dp_math.model_noise_multiplier(1.0, 0.0) == 1.0
    zd = dp_math.model_noise_multiplier(1.0, 5.0)
    assert zd**-2 + (2 * 5.0) ** -2 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="count noise std"):
        dp_math.model_noise_multiplier(4.0, 1.0)


@pytest.mark.parametrize("gamma", [0.5, 0.8])
def test_adaptive_clipping_finds_the_quantile_and_the_naive_rule_does_not(gamma) -> None:
    rng = np.random.default_rng(7)
    m, eta, rounds = 200, 0.2, 400
    target = float(np.exp(np.quantile(rng.normal(0, 0.5, 10**6), gamma)))  # lognormal norms
    ours, naive = 0.1, 0.1
    for _ in range(rounds):
        norms = np.exp(rng.normal(0, 0.5, m))
        noise = rng.normal(0, m / 20)
        ours = dp_math.adaptive_clip(ours, (norms <= ours).sum() + noise, m, gamma, eta)
        naive = dp_math.naive_adaptive_clip(naive, (norms > naive).sum() + noise, m, gamma, eta)
    assert ours == pytest.approx(target, rel=0.1)
    assert not (0.5 * target < naive < 2 * target)


def test_fedavg_dp_device_clipping_adaptive_end_to_end(tmp_path) -> None:
    from shoal.experiments.simulate import simulate
    from shoal.server.outputs import read_metrics

    cfg = tiny_cfg(
        tmp_path,
        "fed.strategy=fedavg-dp",
        "dp.clipping=device",
        "dp.adaptive=true",
        "dp.noise_multiplier=0.5",
        "fed.rounds=3",
        "dp.clipping_norm=5.0",
    )
    run_dir, summary = simulate(cfg, progress=False)
    rows = read_metrics(run_dir)
    eps = [r["value"] for r in sorted(rows, key=lambda r: r["round"]) if r["metric"] == "epsilon"]
    norms = [
        r["value"] for r in sorted(rows, key=lambda r: r["round"]) if r["metric"] == "clipping_norm"
    ]
    assert len(eps) == 3 and eps[0] < eps[1] < eps[2]
    assert summary["privacy"]["epsilon"] == pytest.approx(eps[-1])
    assert summary["privacy"]["delta"] == pytest.approx(1 / summary["devices"])
    assert norms[0] == 5.0 and norms[2] < norms[0]  # updates are small: C shrinks toward them
