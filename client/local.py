"""Run a device task in-process, without Flower's engine (debugging, benchmark baselines).

Builds the same message and node context the simulation engine would hand the ClientApp,
so :func:`run_task` executes exactly the code a simulated device runs.
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import Metadata

from shoal.client.app import handle


def task_message(
    run_dir: str | Path, task: str, rnd: int, arrays: ArrayRecord, device: int | None = None
) -> Message:
    """The message a strategy sends for ``task`` (``device`` set when the server knows it)."""
    cfg: dict = {"task": task, "round": rnd, "run-dir": str(run_dir)}
    if device is not None:
        cfg["device"] = device
    md = Metadata(
        run_id=1,
        message_id=f"local-{task}-{rnd}-{device}",
        src_node_id=0,
        dst_node_id=device or 0,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=3600.0,
        message_type="train" if task.startswith("fit") else "evaluate",
    )
    return Message(metadata=md, content=RecordDict({"arrays": arrays, "config": ConfigRecord(cfg)}))


def device_context(device: int) -> Context:
    """A fresh node context of ``device`` (empty ``state``)."""
    return Context(
        run_id=1,
        node_id=device,
        node_config={"partition-id": device},
        state=RecordDict(),
        run_config={},
    )


def run_task(
    run_dir: str | Path,
    task: str,
    rnd: int,
    arrays: ArrayRecord,
    device: int,
    context: Context | None = None,
) -> Message:
    """Reply of ``device`` to ``task`` in round ``rnd``, computed in this process."""
    return handle(
        task_message(run_dir, task, rnd, arrays, device), context or device_context(device)
    )
