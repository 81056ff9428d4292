"""Device tasks: what a device does when a strategy asks (registry ``DEVICE_TASKS``).

A strategy names the task in the message's config (``task``); the ClientApp runs it on the
device's own partition. Tasks that keep a personal model save it in the device store and
reply with metrics only: personal parameters never leave the device.

========================  ==================================================================
task                      what the device does → what it replies
========================  ==================================================================
``fit``                   global model → local epochs on device-fresh data → new weights
``fit-personal``          personal model (or the global one the first time) → local epochs
                          → saved as personal; metrics only
``evaluate``              global model → test metric sums
``evaluate-personal``     personal model if the device has one, else global → sums
``evaluate-finetune``     global model → ``fed.finetune_epochs`` local epochs → sums
                          (nothing is kept)
========================  ==================================================================

With ``dp.local`` every local training runs DP-SGD (:mod:`shoal.client.dp_sgd`: device
network only, ε cumulative per device in the device store) and the reply's metrics carry the
device's cumulative ``local_epsilon`` and ``local_delta``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flwr.app import ArrayRecord

from shoal.client.device import (
    DeviceRun,
    local_evaluate,
    local_train,
    model_arrays,
    model_with,
)
from shoal.client.store import DeviceStore
from shoal.registry import DEVICE_TASKS

PERSONAL = "personal"
NUM_EXAMPLES = "num-examples"


@dataclass
class TaskInput:
    """Everything a task may use."""

    run: DeviceRun
    device: int
    round: int
    arrays: ArrayRecord
    store: DeviceStore


@dataclass
class TaskOutput:
    """A task's reply: weights (or None) and flat metrics (``num-examples`` always)."""

    arrays: ArrayRecord | None
    metrics: dict[str, float]


def _train(t: TaskInput, model, epochs: int, phase: str = "fit") -> tuple[float, int, dict]:
    """Local training of ``model`` in place (DP-SGD under ``dp.local``) → loss, requests,
    privacy metrics."""
    if t.run.cfg.dp.local:
        from shoal.client.dp_sgd import private_train  # Opacus takes seconds to import

        r = private_train(model, t.run, t.device, t.round, epochs, t.store, phase)
        return r.loss, r.requests, r.metrics()
    loss, n = local_train(model, t.run, t.device, t.round, epochs)
    return loss, n, {}


def _train_metrics(loss: float, n: int, extra: dict) -> dict[str, float]:
    # a device without device-fresh data reports 0 examples (weight 0) and loss 0
    return {NUM_EXAMPLES: n, "train_loss": 0.0 if math.isnan(loss) else loss, **extra}


@DEVICE_TASKS.register("fit")
def fit(t: TaskInput) -> TaskOutput:
    model = model_with(t.run, t.arrays)
    loss, n, extra = _train(t, model, t.run.cfg.fed.local_epochs)
    return TaskOutput(model_arrays(model), _train_metrics(loss, n, extra))


@DEVICE_TASKS.register("fit-personal")
def fit_personal(t: TaskInput) -> TaskOutput:
    own = t.store.load(t.device, PERSONAL, before_round=t.round)
    model = model_with(t.run, own if own is not None else t.arrays)
    loss, n, extra = _train(t, model, t.run.cfg.fed.local_epochs)
    if n:
        t.store.save(t.device, PERSONAL, model.state_dict(), round=t.round)
    return TaskOutput(None, _train_metrics(loss, n, extra))


def _eval_metrics(t: TaskInput, model) -> dict[str, float]:
    sums = local_evaluate(model, t.run, t.device)
    out = sums.to_record()
    out[NUM_EXAMPLES] = int(t.run.requests(t.device, "test").size)
    return out


@DEVICE_TASKS.register("evaluate")
def evaluate_global(t: TaskInput) -> TaskOutput:
    return TaskOutput(None, _eval_metrics(t, model_with(t.run, t.arrays)))


@DEVICE_TASKS.register("evaluate-personal")
def evaluate_personal(t: TaskInput) -> TaskOutput:
    own = t.store.load(t.device, PERSONAL, before_round=t.round + 1)
    model = model_with(t.run, own if own is not None else t.arrays)
    return TaskOutput(None, _eval_metrics(t, model))


@DEVICE_TASKS.register("evaluate-finetune")
def evaluate_finetune(t: TaskInput) -> TaskOutput:
    model = model_with(t.run, t.arrays)
    _, _, extra = _train(t, model, t.run.cfg.fed.finetune_epochs, phase="finetune")
    return TaskOutput(None, {**_eval_metrics(t, model), **extra})
