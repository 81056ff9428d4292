"""Federation building blocks without a simulation: sampling, reply checks, aggregation,
the device store, the metrics file and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _fed_helpers import reply_message as reply
from flwr.app import Array, ArrayRecord, Context, RecordDict

from shoal.client.store import DiskStore, MemoryStore, open_store
from shoal.server.outputs import RunRecorder, load_checkpoint, metric_rows, read_metrics
from shoal.strategies import aggregate as agg
from shoal.strategies.sampling import DeviceDirectory, SortedNodes, sample_devices

GOOD = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}
LAYOUT = {"w": ((2, 3), "float32"), "b": ((3,), "float32")}
METRICS = {"num-examples": 4, "train_loss": 0.5}


def test_sample_devices_is_seeded_sized_and_sorted() -> None:
    a = sample_devices(1000, 0.1, seed=3, round=5)
    assert a.size == 100 and np.all(np.diff(a) > 0) and a.max() < 1000
    assert np.array_equal(a, sample_devices(1000, 0.1, seed=3, round=5))
    assert not np.array_equal(a, sample_devices(1000, 0.1, seed=3, round=6))
    assert not np.array_equal(a, sample_devices(1000, 0.1, seed=4, round=5))
    assert sample_devices(7, 0.01, 0, 1).size == 1  # at least one device
    assert np.array_equal(sample_devices(7, 1.0, 0, 1), np.arange(7))
    with pytest.raises(ValueError, match="fraction"):
        sample_devices(10, 0.0, 0, 1)


def test_device_directory_maps_both_ways() -> None:
    d = DeviceDirectory()
    d.set_mapping({111: 1, 999: 0, 555: 2})
    assert d.n_devices == 3 and d.nodes([0, 2]) == [999, 555] and d.device(111) == 1
    with pytest.raises(ValueError, match="same device"):
        DeviceDirectory().set_mapping({1: 0, 2: 0})
    s = SortedNodes([30, 10, 20])
    assert s.nodes([0, 2]) == [10, 30] and s.device(20) == 1 and not s.knows_devices


@pytest.mark.parametrize(
    "msg, why",
    [
        (reply(1, GOOD, METRICS), None),
        (reply(1, None, None, error="boom"), "device error: boom"),
        (reply(1, {**GOOD, "w": np.full((2, 3), np.nan, np.float32)}, METRICS), "non-finite"),
        (reply(1, {**GOOD, "b": np.array([np.inf, 0, 0], np.float32)}, METRICS), "non-finite"),
        (reply(1, {**GOOD, "w": np.ones((1, 3), np.float32)}, METRICS), "array w is"),
        (reply(1, {**GOOD, "w": np.ones((2, 3), np.float64)}, METRICS), "array w is"),
        (reply(1, {**GOOD, "x": np.ones(1, np.float32)}, METRICS), "unexpected ['x']"),
        (reply(1, {"w": GOOD["w"]}, METRICS), "missing ['b']"),
        (reply(1, GOOD, None), "no 'metrics'"),
        (reply(1, None, METRICS), "no 'arrays'"),
        (reply(1, GOOD, {**METRICS, "num-examples": -1}), "bad num-examples"),
        (reply(1, GOOD, {**METRICS, "train_loss": float("nan")}), "metric train_loss"),
        (reply(1, GOOD, {"num-examples": 4}), "metrics lack"),
    ],
)
def test_reply_problem_names_each_fault(msg, why) -> None:
    got = agg.reply_problem(msg, LAYOUT, {"train_loss"})
    if why is None:
        assert got is None
    else:
        assert got is not None and why in got


def test_weighted_average_matches_hand_computation() -> None:
    a = ArrayRecord({"w": Array(np.array([1.0, 2.0], np.float32)), "n": Array(np.array([1]))})
    b = ArrayRecord({"w": Array(np.array([4.0, 8.0], np.float32)), "n": Array(np.array([4]))})
    out = agg.weighted_average([a, b], [1.0, 2.0])
    assert np.allclose(out["w"].numpy(), [3.0, 6.0]) and out["w"].numpy().dtype == np.float32
    assert out["n"].numpy().tolist() == [3] and out["n"].numpy().dtype == a["n"].numpy().dtype
    with pytest.raises(ValueError, match="positive total weight"):
        agg.weighted_average([a], [0.0])


def test_disk_store_versions_by_round(tmp_path) -> None:
    s = DiskStore(tmp_path)
    assert s.load(7, "personal", before_round=5) is None
    for r in (1, 2, 3):
        s.save(7, "personal", {"w": torch.full((2,), float(r))}, round=r)
    # a load during round 3 must not see what round 3 (interrupted, repeated) wrote
    assert s.load(7, "personal", before_round=3)["w"].tolist() == [2.0, 2.0]
    assert s.load(7, "personal", before_round=4)["w"].tolist() == [3.0, 3.0]
    assert s.load(7, "personal", before_round=2) is None  # only the two newest are kept
    assert s.load(8, "personal", before_round=4) is None
    files = sorted(p.name for p in (tmp_path / "personal" / "00000").iterdir())
    assert files == ["7.r2.pt", "7.r3.pt"]


def test_disk_store_rejects_corrupt_and_foreign_files(tmp_path) -> None:
    s = DiskStore(tmp_path)
    s.save(1, "personal", {"w": torch.ones(1)}, round=1)
    path = tmp_path / "personal" / "00000" / "1.r1.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="unreadable"):
        s.load(1, "personal", before_round=2)
    torch.save({"format": "x"}, path)
    with pytest.raises(ValueError, match="not a Shoal device-state file"):
        s.load(1, "personal", before_round=2)
    with pytest.raises(ValueError, match="name"):
        s.save(1, "../evil", {"w": torch.ones(1)}, round=1)
    with pytest.raises(ValueError, match="dict of str"):
        s.save(1, "personal", {"w": [1.0]}, round=1)


def test_memory_store_uses_context_state() -> None:
    ctx = Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})
    s = open_store("memory", "/nonexistent", ctx)
    assert isinstance(s, MemoryStore)
    for r in (1, 2, 3):
        s.save(0, "personal", {"w": torch.tensor([float(r)])}, round=r)
    assert s.load(0, "personal", before_round=3)["w"].tolist() == [2.0]
    assert sorted(ctx.state.array_records) == ["shoal.personal.r2", "shoal.personal.r3"]
    with pytest.raises(ValueError, match="unknown device store"):
        open_store("cloud", "/x", ctx)


def test_metric_rows_split_metric_and_bucket() -> None:
    rows = metric_rows(3, "fedavg", {"gauc/head": 0.6, "ndcg@10/all": 0.2, "failures": 1})
    got = {(r["metric"], r["bucket"]): r["value"] for r in rows}
    assert got == {("gauc", "head"): 0.6, ("ndcg@10", "all"): 0.2, ("failures", "all"): 1.0}
    assert all(r["round"] == 3 and r["strategy"] == "fedavg" for r in rows)


def test_recorder_drops_rows_after_the_resumed_round(tmp_path) -> None:
    rec = RunRecorder(tmp_path, "fedavg")
    for r in (1, 2, 3):
        rec.record(r, {"gauc/all": r / 10})
    arrays = ArrayRecord({"w": torch.ones(2)})
    rec.checkpoint(2, arrays, {})
    RunRecorder(tmp_path, "fedavg", completed=2)
    assert [r["round"] for r in read_metrics(tmp_path)] == [1, 2]
    ck = load_checkpoint(tmp_path, "fedavg")
    assert ck["round"] == 2 and ck["arrays"]["w"].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="written by strategy 'fedavg'"):
        load_checkpoint(tmp_path, "local-only")
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path, "fedavg")


@pytest.mark.parametrize(
    "x",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array(2.5, dtype=np.float64),
        np.arange(5, dtype=np.int64),
        np.zeros((0, 3), np.float32),
        np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
    ],
)
def test_as_numpy_equals_flowers_decoder(x) -> None:
    a = Array(x)
    got = agg.as_numpy(a)
    assert got.dtype == a.numpy().dtype and np.array_equal(got, a.numpy())
    assert agg.payload_bytes(ArrayRecord({"x": a})) == len(a.data)
