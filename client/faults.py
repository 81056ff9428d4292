"""Client mods for robustness testing: inject device faults, tap replies.

A Flower mod wraps the ClientApp: ``mod(msg, context, call_next) -> Message``. These two let a
simulation exercise what real fleets do to a server (devices that crash, hang or send
garbage) and let a test see exactly what left each device.

>>> from shoal.client.app import make_client_app
>>> app = make_client_app(mods=[FaultInjector({"raise": [3], "nan": [5]})])
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, Context, Message, MessageType

FAULTS = ("raise", "sleep", "nan", "inf", "shape", "extra_key", "missing_key", "no_metrics")


class FaultInjector:
    """Make chosen devices misbehave in training rounds.

    Parameters
    ----------
    faults : dict
        Fault name → device (partition) ids. ``raise``: the app raises; ``sleep``: the device
        replies after ``sleep_s`` seconds (longer than the round timeout, it is lost);
        ``nan`` / ``inf``: one array gets a non-finite value; ``shape``: one array loses its
        last row; ``extra_key`` / ``missing_key``: an array is added / dropped;
        ``no_metrics``: the metrics record is removed.
    sleep_s : float
    rounds : list of int, optional
        Rounds in which the faults happen (default: every round).
    """

    def __init__(
        self, faults: dict[str, list[int]], sleep_s: float = 30.0, rounds: list[int] | None = None
    ) -> None:
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
        self.faults = {k: {int(d) for d in v} for k, v in faults.items()}
        self.sleep_s = sleep_s
        self.rounds = None if rounds is None else {int(r) for r in rounds}

    def _has(self, fault: str, device: int) -> bool:
        return device in self.faults.get(fault, set())

    def __call__(self, msg: Message, context: Context, call_next) -> Message:
        device = int(context.node_config["partition-id"])
        config = msg.content.config_records.get("config", {})
        in_round = self.rounds is None or config.get("round") in self.rounds
        if msg.metadata.message_type != MessageType.TRAIN or not in_round:
            return call_next(msg, context)
        if self._has("raise", device):
            raise RuntimeError(f"injected fault: device {device} crashed")
        if self._has("sleep", device):
            time.sleep(self.sleep_s)
        reply = call_next(msg, context)
        arrays = reply.content.array_records.get("arrays")
        if arrays is None:
            return reply
        name = sorted(arrays.keys())[0]
        a = arrays[name].numpy().copy()
        if self._has("nan", device) or self._has("inf", device):
            a.reshape(-1)[0] = np.nan if self._has("nan", device) else np.inf
            arrays[name] = Array(a)
        if self._has("shape", device):
            arrays[name] = Array(a[:-1] if a.ndim else a.reshape(1))
        if self._has("extra_key", device):
            arrays["injected.extra"] = Array(np.zeros(3, np.float32))
        if self._has("missing_key", device):
            del arrays[sorted(arrays.keys())[-1]]
        if self._has("no_metrics", device):
            del reply.content["metrics"]
        return reply


class ReplyTap:
    """Write what each reply carries to ``<folder>/<device>-<message id>.json``.

    Records the message type, the names of its array records with each array's name, shape
    and SHA-1 of its bytes, and its metric names: enough to prove what left a device.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = str(folder)

    def __call__(self, msg: Message, context: Context, call_next) -> Message:
        import hashlib

        reply = call_next(msg, context)
        device = int(context.node_config["partition-id"])
        rec = {"device": device, "type": msg.metadata.message_type, "arrays": {}}
        if not reply.has_error():
            for rname, arr in reply.content.array_records.items():
                rec["arrays"][rname] = {
                    k: [list(a.shape), hashlib.sha1(a.numpy().tobytes()).hexdigest()]
                    for k, a in arr.items()
                }
            rec["metrics"] = sorted(
                k for m in reply.content.metric_records.values() for k in m.keys()
            )
        os.makedirs(self.folder, exist_ok=True)
        path = Path(self.folder) / f"{device}-{msg.metadata.message_id[:12]}.json"
        path.write_text(json.dumps(rec))
        return reply
