"""A tiny federated run for tests: config, run directory, messages."""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.common import Message, Metadata

from shoal.config import ShoalConfig, load_config

TINY = [
    "sim.users=40",
    "sim.items=2000",
    "model.hidden=8",
    "model.gru_layers=1",
    "model.attention=8",
    "model.mlp=[8]",
    "model.field_dim=4",
    "train.epochs=1",
    "fed.rounds=2",
    "fed.fraction=0.5",
    "fed.eval_every=1",
    "fed.min_devices=1",
    "fed.actors=2",
]


def tiny_cfg(out_dir: Path, *extra: str) -> ShoalConfig:
    return load_config(overrides=[*TINY, f"out_dir={out_dir}", *extra])


def message(
    run_dir: Path | str, task: str, rnd: int, arrays: ArrayRecord, device: int | None = None
) -> Message:
    cfg = {"task": task, "round": rnd, "run-dir": str(run_dir)}
    if device is not None:
        cfg["device"] = device
    md = Metadata(
        run_id=1,
        message_id=f"m-{task}-{rnd}-{device}",
        src_node_id=0,
        dst_node_id=10,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=600,
        message_type="train" if task.startswith("fit") else "evaluate",
    )
    return Message(metadata=md, content=RecordDict({"arrays": arrays, "config": ConfigRecord(cfg)}))


def context(device: int) -> Context:
    return Context(
        run_id=1,
        node_id=10,
        node_config={"partition-id": device},
        state=RecordDict(),
        run_config={},
    )
