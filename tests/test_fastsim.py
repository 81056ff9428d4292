"""``fast_simulation()``: the patched Flower internals against the originals they replace."""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from contextlib import nullcontext
from datetime import timedelta

import flwr
import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import NUM_PARTITIONS_KEY, PARTITION_ID_KEY
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.fleet.vce.backend import raybackend
from flwr.server.superlink.linkstate import LinkStateFactory, in_memory_linkstate
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState, RunRecord
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager

from shoal.server import fastsim, fastsim_ray
from shoal.server.fastsim import fast_simulation

pytestmark = pytest.mark.skipif(
    not fastsim.flwr_version_supported(),
    reason=f"patches target flwr 1.41, have {flwr.__version__}",
)

RUN_ID = 7
BACKEND_CONFIG = {"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}}
PATCHED = [
    (InMemoryLinkState, "get_message_ins"),
    (InMemoryLinkState, "store_message_ins"),
    (InMemoryLinkState, "delete_messages"),
    (vce_api, "add_messages_to_queue"),
    (vce_api, "_register_node_info_stores"),
    (raybackend.RayBackend, "init_ray"),
    (raybackend.RayBackend, "build"),
]


@pytest.fixture
def task_identity(monkeypatch):
    """Messages created outside a simulation need the process's task identity."""
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", RUN_ID)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)


def originals() -> list:
    return [vars(owner)[name] for owner, name in PATCHED]


def make_state(n_nodes: int = 6) -> tuple[InMemoryLinkState, list[int]]:
    """An in-memory LinkState with ``n_nodes`` online nodes and run ``RUN_ID``."""
    factory = LinkStateFactory(
        FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
    )
    nodes = list(vce_api._register_nodes(n_nodes, factory))
    state = factory.state()
    run = Run.create_empty(run_id=RUN_ID)
    run.primary_task_id, run.federation_id = 9, NOOP_FEDERATION_ID
    state.run_ids[RUN_ID] = RunRecord(run=run)
    state.task_store[9] = Task(task_id=9, run_id=RUN_ID)
    return state, nodes


def push(
    state: InMemoryLinkState,
    nodes: list[int],
    plan: list[int],
    ttl: float | None = None,
    prefix: str = "m",
) -> list[str]:
    """Store one message per entry of ``plan`` (an index into ``nodes``); return their ids."""
    ids = []
    for k, i in enumerate(plan):
        msg = Message(
            RecordDict({"c": ConfigRecord({"k": k})}),
            dst_node_id=nodes[i],
            message_type="train",
            ttl=ttl,
        )
        msg.metadata.__dict__["_message_id"] = f"{prefix}{k:03d}"
        assert state.store_message_ins(msg) == f"{prefix}{k:03d}"
        ids.append(f"{prefix}{k:03d}")
    return ids


# Interleaved destinations, several messages per node, node 5 gets none.
PLAN = [0, 1, 2, 0, 3, 1, 0, 4, 2, 0, 1, 3]
CALLS = [(i, 1) for i in range(6)] + [(0, 1), (0, None), (1, 2), (1, None), (2, None)]
CALLS += [(i, None) for i in range(6)]  # everything delivered: nothing comes back twice


def call_sequence(state: InMemoryLinkState, nodes: list[int]) -> list[list[str]]:
    out = []
    for i, limit in CALLS:
        got = state.get_message_ins(node_id=nodes[i], limit=limit)
        assert all(m.metadata.delivered_at != "" for m in got)
        assert all(m.metadata.dst_node_id == nodes[i] for m in got)
        out.append([m.metadata.message_id for m in got])
    return out


def test_indexed_get_message_ins_returns_what_the_original_returns(task_identity) -> None:
    ref_state, ref_nodes = make_state()
    push(ref_state, ref_nodes, PLAN)
    expected = call_sequence(ref_state, ref_nodes)  # unpatched
    assert sum(map(len, expected)) == len(PLAN)

    with fast_simulation():
        state, nodes = make_state()
        push(state, nodes, PLAN)
        got = call_sequence(state, nodes)
        # A run-id filter that matches nothing, on a node with pending messages.
        state2, nodes2 = make_state()
        push(state2, nodes2, PLAN)
        assert state2.get_message_ins(node_id=nodes2[0], limit=None, run_id=RUN_ID + 1) == []
        assert len(state2.get_message_ins(node_id=nodes2[0], limit=None, run_id=RUN_ID)) == 4
    assert got == expected
    assert ref_state.num_message_ins() == state.num_message_ins() == len(PLAN)


def test_index_follows_deletion_expiry_and_unpatched_stores(task_identity, monkeypatch) -> None:
    state, nodes = make_state()
    ids = push(state, nodes, [0, 0, 1])  # stored unpatched: the index is built lazily
    with fast_simulation():
        state.delete_messages({ids[0]})
        assert [m.metadata.message_id for m in state.get_message_ins(nodes[0], None)] == [ids[1]]
        later = push(state, nodes, [2, 2], prefix="n")
        assert [m.metadata.message_id for m in state.get_message_ins(nodes[2], None)] == later
        assert [m.metadata.message_id for m in state.get_message_ins(nodes[1], 5)] == [ids[2]]
        assert all(state.get_message_ins(n, None) == [] for n in nodes)
    # Expiry: with the clock 10 s ahead, 5 s messages are deleted, never delivered. (The
    # original purges every node's expired messages on any call, the index on that node's.)
    for patched in (False, True):
        s, n = make_state()
        push(s, n, [0, 1], ttl=5.0)
        clock = in_memory_linkstate.now
        with monkeypatch.context() as m, fast_simulation() if patched else nullcontext():
            m.setattr(in_memory_linkstate, "now", lambda c=clock: c() + timedelta(seconds=10))
            assert s.get_message_ins(n[0], None) == []
            assert s.get_message_ins(n[1], None) == []
            assert s.num_message_ins() == 0


def test_extractor_delivers_each_pending_message_once(task_identity) -> None:
    with fast_simulation():
        state, nodes = make_state()
        ids = push(state, nodes, PLAN)
        mapping = {n: i for i, n in enumerate(nodes) if i != 4}  # node 4 is not simulated
        q: queue.Queue = queue.Queue()
        stop = threading.Event()
        th = threading.Thread(target=vce_api.add_messages_to_queue, args=(state, q, mapping, stop))
        th.start()
        try:
            time.sleep(0.2)
            ids += push(state, nodes, [3, 3], prefix="n")  # stored while the extractor waits
            plan = [*PLAN, 3, 3]
            expected = len(plan) - plan.count(4)
            deadline = time.monotonic() + 5
            got = []
            while len(got) < expected and time.monotonic() < deadline:
                try:
                    got.append(q.get(timeout=0.1).metadata.message_id)
                except queue.Empty:
                    pass
            time.sleep(0.3)  # nothing more may arrive
        finally:
            stop.set()
            th.join(timeout=5)
    assert not th.is_alive()
    assert q.empty()
    assert sorted(got) == sorted(i for i, p in zip(ids, plan) if p != 4)
    assert [m.metadata.message_id for m in state.get_message_ins(nodes[4], None)] == [
        i for i, p in zip(ids, plan) if p == 4
    ]


def test_lazy_node_info_stores_match_the_eager_original() -> None:
    run = Run.create_empty(run_id=RUN_ID)
    mapping = {11: 0, 22: 1, 33: 2}
    eager = vce_api._register_node_info_stores(mapping, run)
    with fast_simulation():
        lazy = vce_api._register_node_info_stores(mapping, run)
    for node_id in (22, 33, 11):
        a = eager[node_id].retrieve_context(RUN_ID)
        b = lazy[node_id].retrieve_context(RUN_ID)
        assert (a.node_id, a.node_config, a.run_config) == (b.node_id, b.node_config, b.run_config)
    assert dict(lazy[33].node_config) == {PARTITION_ID_KEY: 2, NUM_PARTITIONS_KEY: 3}
    with pytest.raises(KeyError):
        lazy[44]


def test_light_actor_runs_the_client_app_like_flowers_actor(task_identity) -> None:
    from flwr.clientapp.client_app import ClientAppException
    from flwr.simulation.ray_transport.ray_actor import VirtualClientEngineActor

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if msg.content["c"]["fail"]:
            raise RuntimeError("client failed")
        return Message(RecordDict({"c": ConfigRecord({"ok": 1})}), reply_to=msg)

    def message(fail: int) -> Message:
        msg = Message(RecordDict({"c": ConfigRecord({"fail": fail})}), 5, "train")
        msg.metadata.__dict__["_message_id"] = f"id{fail}"
        return msg

    ctx = Context(run_id=RUN_ID, node_id=5, node_config={}, state=RecordDict(), run_config={})
    light, flower = fastsim_ray.LightClientAppActor(), VirtualClientEngineActor()
    for actor in (light, flower):
        cid, reply, out_ctx = actor.run(lambda: app, message(0), "3", ctx)
        assert (cid, reply.content["c"]["ok"], out_ctx) == ("3", 1, ctx)
        with pytest.raises(ClientAppException, match="client failed"):
            actor.run(lambda: app, message(1), "3", ctx)


def test_init_ray_drops_runtime_env_and_inlines_objects(monkeypatch) -> None:
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setenv("PYTHONPATH", "/x")
    backend = raybackend.RayBackend.__new__(raybackend.RayBackend)
    backend.init_args_key = "init_args"
    with fast_simulation(inline_bytes=1234):
        backend.init_ray({"init_args": {"num_cpus": 2}})
        backend.init_ray({"init_args": {"address": "auto"}})  # existing cluster: original
    local, remote = calls
    assert "runtime_env" not in local and local["num_cpus"] == 2
    assert local["_system_config"] == {"max_direct_call_object_size": 1234}
    assert local["include_dashboard"] is False
    assert "runtime_env" in remote and "_system_config" not in remote
    with pytest.raises(ValueError, match="inline_bytes"):
        with fast_simulation(inline_bytes=-1):
            pass


def test_originals_are_restored_after_the_block_and_after_an_exception() -> None:
    before = originals()
    with fast_simulation() as active:
        assert active
        assert all(new is not old for new, old in zip(originals(), before))
        with fast_simulation() as nested:  # nested: a no-op that leaves the outer patches
            assert not nested
        assert all(new is not old for new, old in zip(originals(), before))
    assert all(new is old for new, old in zip(originals(), before))
    with pytest.raises(RuntimeError, match="boom"):
        with fast_simulation():
            raise RuntimeError("boom")
    assert all(new is old for new, old in zip(originals(), before))
    assert not fastsim.is_patched()


def test_other_flower_versions_are_left_alone(monkeypatch, caplog) -> None:
    monkeypatch.setattr(flwr, "__version__", "1.42.0")
    before = originals()
    with caplog.at_level(logging.WARNING, logger=fastsim.__name__):
        with fast_simulation() as active:
            assert not active
            assert all(new is old for new, old in zip(originals(), before))
    assert "1.42.0" in caplog.text


def test_simulation_inside_the_block_answers_every_sampled_node_once() -> None:
    n_nodes, rounds = 20, 2
    payload = np.arange(1000, dtype=np.float32)
    replies: list[list[tuple[int, int, bool]]] = []
    sampled: list[list[int]] = []

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({"partition-id": context.node_config["partition-id"]})
        return Message(
            RecordDict({"arrays": msg.content["arrays"], "metrics": metrics}), reply_to=msg
        )

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        assert fastsim.is_patched()
        while len(node_ids := sorted(grid.get_node_ids())) < n_nodes:
            time.sleep(0.02)
        rng = random.Random(0)
        for r in range(rounds):
            dst = node_ids if r == 0 else rng.sample(node_ids, 8)
            arrays = ArrayRecord([payload + r])
            msgs = [
                Message(RecordDict({"arrays": arrays}), dst_node_id=n, message_type="train")
                for n in dst
            ]
            sampled.append(list(dst))
            replies.append(
                [
                    (
                        rep.metadata.src_node_id,
                        int(rep.content["metrics"]["partition-id"]),
                        np.array_equal(rep.content["arrays"].to_numpy_ndarrays()[0], payload + r),
                    )
                    for rep in grid.send_and_receive(msgs, timeout=60)
                ]
            )

    with fast_simulation():
        run_simulation(server, client, num_supernodes=n_nodes, backend_config=BACKEND_CONFIG)

    assert len(replies) == rounds
    partition_of: dict[int, int] = {}
    for dst, reps in zip(sampled, replies):
        assert sorted(src for src, _, _ in reps) == sorted(dst)  # each exactly once
        assert all(ok for _, _, ok in reps)
        for src, pid, _ in reps:
            assert partition_of.setdefault(src, pid) == pid  # same node, same partition
    assert sorted(partition_of.values()) == list(range(n_nodes))
