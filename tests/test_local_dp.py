"""On-device DP-SGD (``dp.local``, ``shoal.client.dp_sgd``): the reply keeps the global
model's layout and cloud part, ε is cumulative across rounds and equals an independent
accountant's, per-request gradients and clipping are exact."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from _fed_helpers import tiny_cfg
from flwr.app import ArrayRecord
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.grad_sample import GradSampleModule

from shoal.client import dp_sgd
from shoal.client.device import model_with, open_run
from shoal.client.dp_gru import SampleGRU
from shoal.client.dp_sgd import (
    ACCOUNTANT,
    DEFAULT_DELTA,
    local_delta,
    private_network,
    private_train,
    request_losses,
)
from shoal.client.local import run_task
from shoal.client.models import build_model
from shoal.client.models.reranker import batch_tensors
from shoal.client.store import DiskStore
from shoal.config import DPConfig, ModelConfig
from shoal.server.setup import initial_model, open_run_dir, prepare_run

pytestmark = pytest.mark.filterwarnings(
    "ignore:Full backward hook is firing", "ignore:Optimal order is the"
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("localdp")
    run_dir = prepare_run(tiny_cfg(out, "dp.local=true", "fed.init=random"))
    cfg, meta = open_run_dir(run_dir)
    model = initial_model("random", cfg, meta["data_dir"])
    arrays = ArrayRecord({k: v.detach().clone() for k, v in model.state_dict().items()})
    r = open_run(run_dir)
    n = {d: int(r.requests(d, "device").size) for d in range(r.parts.num_partitions)}
    return run_dir, arrays, n


def _with(r, fed: dict | None = None, **dp):
    """The device run ``r`` with other ``fed`` and ``dp`` settings."""
    cfg = copy.deepcopy(r.cfg)
    for k, v in dp.items():
        setattr(cfg.dp, k, v)
    for k, v in (fed or {}).items():
        setattr(cfg.fed, k, v)
    return dataclasses.replace(r, cfg=cfg)


def _biggest(n: dict[int, int]) -> int:
    return max(n, key=n.get)


def _hand_grads(model, r, b) -> list[dict[str, torch.Tensor]]:
    """Gradient of each request's own loss, one request at a time (plain nn.GRU network)."""
    net, out = model.device, []
    for i in range(len(b.request)):
        net.zero_grad()
        one = r.log.batch(b.request[i : i + 1], r.seq.ie, r.seq.ipv)
        request_losses(model, one, r.log.schema, r.cfg.train.listwise).sum().backward()
        out.append(
            {
                k: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                for k, p in net.named_parameters()
            }
        )
    net.zero_grad()
    return out


def test_fit_reply_has_global_layout_and_unchanged_cloud_part(run) -> None:
    run_dir, arrays, n = run
    dev = _biggest(n)
    out = run_task(run_dir, "fit", 1, arrays, dev)  # the ClientApp's own path
    assert not out.has_error(), out.error
    new = out.content.array_records["arrays"]
    assert list(new.keys()) == list(arrays.keys())  # nn.GRU names, no Opacus aliases
    for k in arrays.keys():
        assert (new[k].shape, new[k].dtype) == (arrays[k].shape, arrays[k].dtype), k
    changed = {k for k in arrays.keys() if not np.array_equal(new[k].numpy(), arrays[k].numpy())}
    assert not {k for k in changed if k.startswith("cloud.")}, "the cloud part must be frozen"
    assert any(".gru." in k for k in changed) and any(".head." in k for k in changed)
    m = out.content.metric_records["metrics"]
    assert m["num-examples"] == n[dev] and math.isfinite(m["train_loss"])
    assert m["local_epsilon"] > 0 and m["local_delta"] == DEFAULT_DELTA
    # padding rows of device-side embeddings get neither gradient nor noise
    pads = [k for k in arrays.keys() if k.startswith("device.") and ".tables." in k]
    assert pads and all(np.array_equal(new[k].numpy()[0], arrays[k].numpy()[0]) for k in pads)
    # seeded by (seed, round, device): the same message gives the same weights
    again = run_task(run_dir, "fit", 1, arrays, dev).content.array_records["arrays"]
    assert all(np.array_equal(again[k].numpy(), new[k].numpy()) for k in changed)
    # a device without device-fresh data trains nothing and reports no ε
    idle = next(d for d, c in n.items() if c == 0)
    m0 = run_task(run_dir, "fit", 1, arrays, idle).content.metric_records["metrics"]
    assert m0["num-examples"] == 0 and "local_epsilon" not in m0


def test_personal_and_finetune_tasks_spend_the_same_budget(run) -> None:
    run_dir, arrays, n = run
    dev = sorted(n, key=n.get)[-2]
    fit = run_task(run_dir, "fit-personal", 1, arrays, dev).content.metric_records["metrics"]
    ev = run_task(run_dir, "evaluate-finetune", 1, arrays, dev).content.metric_records["metrics"]
    assert 0 < fit["local_epsilon"] < ev["local_epsilon"]  # both sessions count


def test_delta() -> None:
    assert local_delta(DPConfig()) == DEFAULT_DELTA == 1e-5
    assert local_delta(DPConfig(delta=1e-7)) == 1e-7


def test_private_copy_has_the_same_names_and_outputs(run) -> None:
    run_dir, arrays, n = run
    r = open_run(run_dir)
    model = model_with(r, arrays).eval()
    dp = private_network(model.device).eval()
    assert list(dp.state_dict()) == list(model.device.state_dict())  # no alias keys
    assert any(isinstance(m, SampleGRU) for m in dp.modules())
    assert not any(type(m) is torch.nn.GRU for m in dp.modules())
    tb = batch_tensors(r.log.batch(r.requests(_biggest(n), "device")[:4], r.seq.ie, r.seq.ipv))
    with torch.no_grad():
        torch.testing.assert_close(dp(*model.ship(tb)), model(tb))


@pytest.mark.parametrize("kind, accountant", [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_epsilon_is_cumulative_across_rounds(run, tmp_path, kind, accountant) -> None:
    run_dir, arrays, n = run
    r = _with(open_run(run_dir), accountant=kind)
    dev = _biggest(n)
    epochs = r.cfg.fed.local_epochs
    per_epoch = math.ceil(n[dev] / r.cfg.fed.local_batch)  # Poisson rate q = 1 / per_epoch
    assert per_epoch > 1
    eps = []
    for rnd in (1, 2):  # a fresh store object and a fresh engine every round
        res = private_train(model_with(r, arrays), r, dev, rnd, epochs, DiskStore(tmp_path))
        assert res.steps == per_epoch * epochs
        eps.append(res.epsilon)
    ref = accountant()  # independent: Opacus' own accountant stepped the same way
    for _ in range(2 * per_epoch * epochs):
        ref.step(noise_multiplier=r.cfg.dp.local_noise_multiplier, sample_rate=1 / per_epoch)
    assert eps[1] > eps[0] > 0
    assert eps[1] == pytest.approx(ref.get_epsilon(delta=DEFAULT_DELTA), rel=1e-6)


def test_repeated_session_replaces_its_row_and_finetune_adds_one(run, tmp_path) -> None:
    run_dir, arrays, n = run
    r, dev = open_run(run_dir), _biggest(n)

    def train(rnd, phase="fit"):
        model = model_with(r, arrays)
        return private_train(model, r, dev, rnd, 1, DiskStore(tmp_path), phase).epsilon

    first, second = train(1), train(2)
    assert train(2) == pytest.approx(second, rel=1e-12)  # round 2 again (resume): no extra ε
    assert train(2, "finetune") > second  # evaluate-finetune in the same round adds
    rows = DiskStore(tmp_path).load(dev, ACCOUNTANT, before_round=3)["history"]
    assert rows.shape == (3, 5) and first < second


@pytest.mark.parametrize("name", ["crban-hubsm", "crban-huism", "kuaishou"])
def test_per_request_gradients_equal_single_request_loop(run, name) -> None:
    """Opacus' per-sample gradients (SampleGRU's batched BPTT, hooks for the rest, DIN's
    linear layers on (B, K, T, H) inputs) equal the gradients of each request's loss alone
    through the plain network."""
    run_dir, _, n = run
    r = open_run(run_dir)
    torch.manual_seed(0)
    mc = ModelConfig(name=name, hidden=8, gru_layers=2, attention=8, mlp=[8], field_dim=4)
    model = build_model(mc, r.log.schema, r.log.n_items).train()
    b = r.log.batch(r.requests(_biggest(n), "device")[:6], r.seq.ie, r.seq.ipv)
    ref = _hand_grads(model, r, b)
    dp = private_network(model.device).train()
    gsm = GradSampleModule(dp, batch_first=True, loss_reduction="mean")
    request_losses(model, b, r.log.schema, r.cfg.train.listwise, gsm).mean().backward()
    got = dict(dp.named_parameters())
    assert sorted(got) == sorted(ref[0])
    for k, p in got.items():
        want = torch.stack([g[k] for g in ref])
        torch.testing.assert_close(p.grad_sample, want, atol=2e-6, rtol=1e-4, msg=k)


def test_one_step_update_is_the_clipped_mean(run, tmp_path) -> None:
    """q = 1 (batch >= requests): one SGD step is -lr · Σ_i clip(g_i, C) / n (noise ~ 0)."""
    run_dir, arrays, n = run
    dev = max((d for d in n if 1 < n[d] <= 16), key=n.get)
    lr, C = 0.5, 0.05
    fed = {"local_batch": 16, "local_optimizer": "sgd", "local_lr": lr}
    r = _with(open_run(run_dir), fed, local_noise_multiplier=1e-9, local_max_grad_norm=C)
    model = model_with(r, arrays)
    before = {k: v.clone() for k, v in model.device.state_dict().items()}
    grads = _hand_grads(model, r, r.log.batch(r.requests(dev, "device"), r.seq.ie, r.seq.ipv))
    norms = [float(torch.sqrt(sum((v**2).sum() for v in g.values()))) for g in grads]
    assert max(norms) > C, "the bound must bite for this test to mean anything"
    res = private_train(model, r, dev, 1, 1, DiskStore(tmp_path))
    assert res.steps == 1
    after = model.device.state_dict()
    for k in grads[0]:
        clipped = sum(g[k] * min(1.0, C / (norm + 1e-6)) for g, norm in zip(grads, norms))
        torch.testing.assert_close(after[k] - before[k], -lr * clipped / n[dev], atol=1e-6, rtol=0)
    step = torch.sqrt(sum(((after[k] - before[k]) ** 2).sum() for k in grads[0]))
    assert float(step) <= lr * C + 1e-6


def test_empty_poisson_batches_take_noise_only_steps(run, tmp_path, monkeypatch) -> None:
    run_dir, arrays, n = run
    dev = _biggest(n)
    r = _with(open_run(run_dir), {"local_batch": 1})  # q = 1/n: about a third of draws empty
    calls = []
    real = dp_sgd.request_losses

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(dp_sgd, "request_losses", counting)
    model = model_with(r, arrays)
    before = model.device.state_dict()["head.1.bias"].clone()
    res = private_train(model, r, dev, 1, 1, DiskStore(tmp_path))
    assert res.steps == n[dev] and len(calls) < res.steps  # some steps had no request
    assert not torch.equal(model.device.state_dict()["head.1.bias"], before)
    assert res.epsilon > 0
