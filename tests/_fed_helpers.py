"""A tiny federated run for tests: config, run directory, messages."""

from __future__ import annotations

from pathlib import Path

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
