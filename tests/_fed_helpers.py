"""A tiny federated run for tests: config, run directory, messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Error, MetricRecord, RecordDict
from flwr.common import Message, Metadata

from shoal.client.local import device_context, task_message
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


message = task_message
context = device_context


def reply_message(
    node: int, arrays: dict | None, metrics: dict | None, error: str | None = None
) -> Message:
    """A device's reply from ``node``: arrays and metrics, or an error."""
    md = Metadata(
        run_id=1,
        message_id=f"m{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="x",
        group_id="",
        created_at=0.0,
        ttl=60,
        message_type="train",
    )
    if error is not None:
        return Message(metadata=md, error=Error(code=1, reason=error))
    content = RecordDict()
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
    if metrics is not None:
        content["metrics"] = MetricRecord(metrics)
    return Message(metadata=md, content=content)
