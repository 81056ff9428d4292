"""The device ClientApp in-process (no simulation engine): tasks, personal state, bad input,
and the strategy hooks on real device replies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _fed_helpers import context, message, tiny_cfg
from flwr.app import Array, ArrayRecord

from shoal.client.app import handle
from shoal.client.device import local_evaluate, model_with, open_run
from shoal.client.store import DiskStore
from shoal.client.training import evaluate
from shoal.datasets.splits import BUCKETS
from shoal.metrics import MetricSums
from shoal.server.setup import initial_model, open_run_dir, prepare_run
from shoal.strategies.fedavg import FedAvg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fed")
    run_dir = prepare_run(tiny_cfg(out))
    cfg, meta = open_run_dir(run_dir)
    model = initial_model("cloud", cfg, meta["data_dir"])
    arrays = ArrayRecord({k: v.detach().clone() for k, v in model.state_dict().items()})
    return run_dir, cfg, meta, arrays


def with_data(run_dir, split="device") -> list[int]:
    r = open_run(run_dir)
    return [d for d in range(r.parts.num_partitions) if r.requests(d, split).size > 0]


def test_fit_returns_trained_weights_and_examples(run) -> None:
    run_dir, _, _, arrays = run
    dev = with_data(run_dir)[0]
    out = handle(message(run_dir, "fit", 1, arrays, dev), context(dev))
    m = out.content.metric_records["metrics"]
    assert m["num-examples"] == open_run(run_dir).requests(dev, "device").size
    assert m["device"] == dev and np.isfinite(m["train_loss"])
    new = out.content.array_records["arrays"]
    assert list(new.keys()) == list(arrays.keys())
    moved = [k for k in arrays.keys() if not np.array_equal(new[k].numpy(), arrays[k].numpy())]
    assert moved, "local training changed no weight"
    # seeded by (seed, round, device): the same message gives the same weights
    again = handle(message(run_dir, "fit", 1, arrays, dev), context(dev))
    k = moved[0]
    assert np.array_equal(again.content.array_records["arrays"][k].numpy(), new[k].numpy())


def test_device_without_fresh_data_has_weight_zero(run) -> None:
    run_dir, _, meta, arrays = run
    dev = next(d for d in range(meta["devices"]) if d not in with_data(run_dir))
    out = handle(message(run_dir, "fit", 1, arrays, dev), context(dev))
    assert out.content.metric_records["metrics"]["num-examples"] == 0


def test_personal_model_stays_on_device(run) -> None:
    run_dir, _, _, arrays = run
    dev = with_data(run_dir)[1]
    out = handle(message(run_dir, "fit-personal", 1, arrays, dev), context(dev))
    assert not out.content.array_records, "fit-personal must not reply with weights"
    personal = DiskStore(run_dir / "store").load(dev, "personal", before_round=2)
    assert personal is not None
    assert any(not torch.equal(personal[k], torch.from_numpy(arrays[k].numpy())) for k in personal)
    ev = handle(message(run_dir, "evaluate-personal", 1, arrays, dev), context(dev))
    assert not ev.content.array_records
    got = ev.content.metric_records["metrics"]
    r = open_run(run_dir)
    want = local_evaluate(model_with(r, personal), r, dev).to_record()
    assert all(got[k] == pytest.approx(v) for k, v in want.items())


def test_device_metric_sums_add_up_to_central_evaluation(run) -> None:
    run_dir, _, meta, arrays = run
    parts = []
    for d in range(meta["devices"]):
        out = handle(message(run_dir, "evaluate", 1, arrays, d), context(d))
        rec = out.content.metric_records["metrics"]
        parts.append(MetricSums.from_record({k: v for k, v in rec.items() if "/" in k}, BUCKETS))
    fed = MetricSums.total(parts).finalize()
    r = open_run(run_dir)
    model = model_with(r, arrays)
    central = evaluate(model, r.log, r.parts.of_split("test"), r.bucket, 512, r.seq, BUCKETS)
    for metric in ("gauc", "uauc", "logloss", "ndcg@10"):
        for b in ("all", *BUCKETS):
            a, c = fed[metric][b], central.finalize()[metric][b]
            assert (np.isnan(a) and np.isnan(c)) or a == pytest.approx(c, rel=1e-9)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda c: c.pop("task"), "lacks 'task'"),
        (lambda c: c.__setitem__("task", "dance"), "unknown device task 'dance'"),
        (lambda c: c.__setitem__("round", "one"), "'round' must be int"),
        (lambda c: c.__setitem__("device", 999), "message for device 999 reached device"),
        (lambda c: c.__setitem__("run-dir", "/nonexistent"), "not a Shoal run directory"),
    ],
)
def test_bad_messages_raise_clear_errors(run, mutate, match) -> None:
    run_dir, _, _, arrays = run
    msg = message(run_dir, "fit", 1, arrays, 0)
    mutate(msg.content.config_records["config"])
    with pytest.raises(ValueError, match=match):
        handle(msg, context(0))


def test_model_of_another_version_is_refused(run) -> None:
    run_dir, _, _, arrays = run
    sd = arrays.to_torch_state_dict()
    key = next(iter(sd))
    sd[key] = torch.zeros(3, 3, 3)
    with pytest.raises(ValueError, match="does not match this device's model"):
        handle(message(run_dir, "fit", 1, ArrayRecord(sd), 0), context(0))


def test_fedavg_aggregates_real_replies_and_excludes_faults(run) -> None:
    run_dir, cfg, _, arrays = run
    devs = with_data(run_dir)[:3]
    replies = [handle(message(run_dir, "fit", 1, arrays, d), context(d)) for d in devs]
    strat = FedAvg(cfg, str(run_dir))
    strat._expect = {k: (tuple(a.shape), str(a.dtype)) for k, a in arrays.items()}
    strat.last_round = {"sampled": 5}  # 3 good + 1 NaN replies, 1 device never replied
    bad = handle(message(run_dir, "fit", 1, arrays, devs[0]), context(devs[0]))
    k = next(iter(arrays.keys()))
    bad.content.array_records["arrays"][k] = Array(np.full(arrays[k].shape, np.nan, np.float32))
    new, metrics = strat.aggregate_train(1, [*replies, bad])
    assert metrics["failures"] == 2 and metrics["replied"] == 3 and metrics["sampled"] == 5
    n = np.array([r.content.metric_records["metrics"]["num-examples"] for r in replies], float)
    want = sum(w * r.content.array_records["arrays"][k].numpy() for w, r in zip(n, replies))
    assert np.allclose(new[k].numpy(), want / n.sum(), atol=1e-6)
    strat.fed.min_devices = 4
    kept, m2 = strat.aggregate_train(1, replies)
    strat.fed.min_devices = 1
    assert kept is None and m2["failed_round"] == 1


def test_initial_model_cache_follows_the_parameter_layout(run, monkeypatch) -> None:
    """A cached model is reused while the network's layout is unchanged, and retrained (not
    loaded into the wrong parameters) once the code builds a different layout."""
    _, cfg, meta, arrays = run
    models = Path(meta["data_dir"]) / "models"
    cached = initial_model("cloud", cfg, meta["data_dir"])  # from the cache
    for k, v in cached.state_dict().items():
        assert np.array_equal(v.numpy(), arrays[k].numpy())
    files = sorted(p.name for p in models.iterdir())
    from shoal.server.setup import build_model as build

    def newer_version(*a, **kw):  # as if a release added a parameter to the network
        model = build(*a, **kw)
        model.device.extra = torch.nn.Parameter(torch.zeros(3))
        return model

    monkeypatch.setattr("shoal.server.setup.build_model", newer_version)
    retrained = initial_model("cloud", cfg, meta["data_dir"])
    assert "device.extra" in retrained.state_dict()
    after = sorted(p.name for p in models.iterdir())
    assert set(files) < set(after)  # a second cache entry; the old one is left alone
