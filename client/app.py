"""The Flower ``ClientApp`` of a device: runs the device task a strategy asks for.

Each message's config carries ``task`` (a name in ``DEVICE_TASKS``), ``round`` and
``run-dir``; the message's ``arrays`` carry the global model. The device is the node's
``partition-id``; when the server knows which device it addresses (``device`` in the config)
a mismatch is an error rather than a silent train on the wrong data.

Reply: ``arrays`` (only from tasks that return weights) and ``metrics`` (always, with
``num-examples``). Exceptions become Flower error replies, which the strategy counts as
failures.
"""

from __future__ import annotations

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from shoal.client import tasks
from shoal.client.device import open_run
from shoal.client.dp_clip import ClippingMod
from shoal.client.store import open_store
from shoal.registry import DEVICE_TASKS

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"


def _config_value(config: ConfigRecord, key: str, kind: type):
    if key not in config:
        raise ValueError(f"message config lacks {key!r} (got keys {sorted(config)})")
    v = config[key]
    if not isinstance(v, kind):
        raise ValueError(f"message config {key!r} must be {kind.__name__}, got {v!r}")
    return v


def handle(msg: Message, context: Context) -> Message:
    """Run the device task named in ``msg`` and build the reply."""
    config = msg.content.config_records.get(CONFIG)
    if config is None:
        raise ValueError("message has no 'config' record")
    task = DEVICE_TASKS.get(_config_value(config, "task", str))
    run = open_run(_config_value(config, "run-dir", str))
    round_ = int(_config_value(config, "round", int))
    device = int(context.node_config["partition-id"])
    if "device" in config and int(config["device"]) != device:
        raise ValueError(f"message for device {config['device']} reached device {device}")
    arrays = msg.content.array_records.get(ARRAYS)
    if arrays is None:
        raise ValueError("message has no 'arrays' record (the global model)")
    if run.cfg.train.threads:
        torch.set_num_threads(run.cfg.train.threads)
    store = open_store(run.cfg.fed.store, run.run_dir, context)
    out = task(tasks.TaskInput(run, device, round_, arrays, store))
    content = RecordDict({METRICS: MetricRecord({**out.metrics, "device": device})})
    if out.arrays is not None:
        content[ARRAYS] = out.arrays
    return Message(content, reply_to=msg)


def train(msg: Message, context: Context) -> Message:
    return handle(msg, context)


def evaluate(msg: Message, context: Context) -> Message:
    return handle(msg, context)


def make_client_app(mods: list | None = None) -> ClientApp:
    """The device ClientApp with device-side DP clipping (inert unless a message asks for it),
    optionally wrapped in more Flower mods (e.g. ``shoal.client.faults``), outermost first."""
    client = ClientApp(mods=[*(mods or []), ClippingMod()])
    client.train()(train)
    client.evaluate()(evaluate)
    return client


app = make_client_app()
